//! Accepting connections for tonic: plaintext straight from the listener, or TLS with each
//! handshake in its own task (a slow or silent client never holds up the accept loop), the
//! finished streams handed to the server through a channel.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ReloadingTls;
use crate::telemetry::metrics::TLS_HANDSHAKES;

/// Handshakes in progress at once; past this the accept loop waits (backpressure on a flood).
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Finished TLS connections waiting for the server to take them.
const READY_QUEUE: usize = 64;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// One accepted connection, plaintext or TLS.
#[derive(Debug)]
pub enum ServerIo {
    /// A plain TCP connection.
    Plain(TcpStream),
    /// A TLS connection whose handshake has completed.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ServerIo {
    /// The TLS session, when there is one (peer certificates, protocol version, ALPN).
    pub fn tls(&self) -> Option<&rustls::ServerConnection> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(stream) => Some(stream.get_ref().1),
        }
    }
}

impl Connected for ServerIo {
    /// The TCP addresses, as for plaintext, so `Request::remote_addr` works either way.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Plain(tcp) => tcp.connect_info(),
            Self::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections tonic serves (`serve_with_incoming_shutdown`). Dropping it (tonic does as
/// soon as it stops accepting) closes the listening socket.
#[derive(Debug)]
pub enum Incoming {
    /// Plaintext: the listener itself.
    Plain(TcpListenerStream),
    /// TLS: connections whose handshake completed, from the accept task.
    Tls(ReceiverStream<ServerIo>),
}

impl Incoming {
    /// Plaintext connections from `listener`.
    pub fn plain(listener: TcpListener) -> Self {
        Self::Plain(TcpListenerStream::new(listener))
    }

    /// TLS connections from `listener`: spawns the accept loop, which ends (closing the
    /// listener) when this stream is dropped.
    pub fn tls(listener: TcpListener, tls: Arc<ReloadingTls>, handshake_timeout: Duration) -> Self {
        let (ready, rx) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(listener, tls, ready, handshake_timeout));
        Self::Tls(ReceiverStream::new(rx))
    }
}

impl Stream for Incoming {
    type Item = io::Result<ServerIo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Plain(listener) => Pin::new(listener).poll_next(cx).map(|next| {
                next.map(|accepted| {
                    accepted.map(|tcp| {
                        // gRPC writes small frames that must not wait for Nagle's algorithm.
                        let _ = tcp.set_nodelay(true);
                        ServerIo::Plain(tcp)
                    })
                })
            }),
            Self::Tls(ready) => Pin::new(ready).poll_next(cx).map(|next| next.map(Ok)),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    ready: mpsc::Sender<ServerIo>,
    handshake_timeout: Duration,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = ready.closed() => return,
            permit = pending.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // The config in force now: a reloaded client CA applies from the next connection on.
        let acceptor = TlsAcceptor::from(tls.config());
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handshake(acceptor, tcp, peer, handshake_timeout, ready).await;
        });
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    ready: mpsc::Sender<ServerIo>,
) {
    let outcome = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            // A send error means the server stopped accepting; the connection just closes.
            let _ = ready.send(ServerIo::Tls(Box::new(stream))).await;
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
