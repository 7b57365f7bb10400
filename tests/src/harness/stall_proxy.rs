//! A TCP proxy in front of a server that can stall: while stalled, no byte passes either way
//! (connections stay open, as on a network that drops packets without a reset), so a test can
//! cut a client off a live server and let it back.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct StallProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// True while stalled.
    stalled: watch::Sender<bool>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    /// Proxies `127.0.0.1:0` to `target`.
    pub async fn start(target: SocketAddr) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (stalled, _) = watch::channel(false);
        let gate = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, gate.clone()),
                        pump(server_read, client_write, gate),
                    );
                });
            }
        });
        StallProxy {
            addr,
            stalled,
            task,
        }
    }

    /// `http://<proxy address>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops every byte, on open connections and new ones, until [`resume`](Self::resume).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets bytes pass again (those held during the stall first).
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the gate says stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
