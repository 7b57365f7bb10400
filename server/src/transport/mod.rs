//! The gRPC port's connections: accepted plaintext or over TLS, bounded in number, closed when
//! silent or idle, with HTTP/2 streams, headers and keepalive bounded by tonic's server.

mod accept;
mod activity;
mod io;

use tonic::transport::Server;

pub use accept::{Incoming, TlsAccept};
pub use activity::{CallCountLayer, Registry};
pub use io::ServerIo;

use crate::config::TransportLimits;

/// tonic's server with the HTTP/2 bounds of `limits`.
pub fn server_builder(limits: &TransportLimits) -> Server {
    Server::builder()
        // Unset, tonic would give h2 no limit where hyper's own default is 200.
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_size)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}
