//! One accepted connection's bytes, plaintext or TLS, closed from our side when it stays
//! silent (no HTTP/2 preface in time) or idle (no call for too long).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::activity::Registration;

/// Bytes of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`): until they are in,
/// the connection is silent.
const PREFACE_LEN: usize = 24;

/// The stream under a connection.
#[derive(Debug)]
enum Stream {
    /// A plain TCP connection.
    Plain(TcpStream),
    /// A TLS connection whose handshake has completed.
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection, as tonic serves it.
#[derive(Debug)]
pub struct ServerIo {
    stream: Stream,
    /// When to close it from our side.
    watch: Watch,
}

/// A connection's deadlines and the resources it holds while open.
#[derive(Debug)]
pub(super) struct Watch {
    /// Preface bytes still to come; the silent deadline applies while any are.
    preface_left: usize,
    /// The preface must be in by then.
    silent_deadline: Instant,
    /// How long the preface may take.
    silent_timeout: Duration,
    /// How long the connection may go without a call.
    idle_timeout: Duration,
    /// Wakes the connection's task at the next deadline, so a connection that sends nothing
    /// is still looked at.
    timer: Pin<Box<Sleep>>,
    /// The connection's calls in flight.
    registration: Registration,
    /// The connection's place under `transport.max_connections`.
    _permit: OwnedSemaphorePermit,
}

impl Watch {
    /// Watches a connection from now: its preface is due within `silent_timeout`.
    pub(super) fn new(
        registration: Registration,
        permit: OwnedSemaphorePermit,
        silent_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let silent_deadline = Instant::now() + silent_timeout;
        Self {
            preface_left: PREFACE_LEN,
            silent_deadline,
            silent_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(silent_deadline)),
            registration,
            _permit: permit,
        }
    }

    /// The same watch with the preface due `silent_timeout` from now (after a TLS handshake,
    /// which has its own timeout).
    pub(super) fn restarted(mut self) -> Self {
        self.silent_deadline = Instant::now() + self.silent_timeout;
        self.timer.as_mut().reset(self.silent_deadline);
        self
    }

    /// Counts bytes read towards the preface.
    fn received(&mut self, n: usize) {
        self.preface_left = self.preface_left.saturating_sub(n);
    }

    /// True when the connection is due to close: silent past its deadline, or with no call in
    /// flight for the idle timeout. The timer is always armed no later than the next deadline,
    /// so until it fires nothing is read, not even the clock: a busy connection pays one timer
    /// poll per pending read.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = Instant::now();
        let deadline = if self.preface_left > 0 {
            self.silent_deadline
        } else {
            match self.registration.idle_since() {
                Some(since) => Instant::from_std(since) + self.idle_timeout,
                // Calls in flight: they end no earlier than now, so idleness cannot end
                // before one idle timeout from now; look again then.
                None => now + self.idle_timeout,
            }
        };
        if now >= deadline {
            return true;
        }
        self.timer.as_mut().reset(deadline);
        // Registers the waker for the new deadline (it has not passed, so this is pending).
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl ServerIo {
    /// A plain TCP connection.
    pub(super) fn plain(tcp: TcpStream, watch: Watch) -> Self {
        Self {
            stream: Stream::Plain(tcp),
            watch,
        }
    }

    /// A TLS connection whose handshake has completed.
    pub(super) fn tls(stream: TlsStream<TcpStream>, watch: Watch) -> Self {
        Self {
            stream: Stream::Tls(Box::new(stream)),
            watch,
        }
    }
}

impl Connected for ServerIo {
    /// The TCP addresses, as for plaintext, so `Request::remote_addr` works either way.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Stream::Plain(tcp) => tcp.connect_info(),
            Stream::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) => {
                this.watch.received(buf.filled().len() - before);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Nothing to read now: end of stream when a deadline passed, which closes the
            // connection (with no call in flight, nothing is cut short).
            Poll::Pending if this.watch.expired(cx) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
