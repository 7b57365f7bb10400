//! TLS on the gRPC port: rustls (TLS 1.3 and 1.2, ALPN `h2`) on the ring crypto provider, the
//! one the redis crate's rustls uses too; certificates reloaded from their files without
//! dropping connections (cert-manager rotates them); optional client-certificate verification
//! against a CA bundle (mTLS). Handshakes happen in the accept loop's tasks (`transport`).
//!
//! Plaintext stays possible for loopback and for a TLS-terminating sidecar, with a loud warning
//! on any other address, or an error with `--require-tls`.

mod files;
mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use reload::{PollReport, ReloadingCertResolver, ReloadingTls};

use crate::config::TlsConfig;

/// Why TLS could not be set up. Messages name the setting and the file, never file content
/// (the key file is secret).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{origin} ({}): cannot read: {source}", path.display())]
    Read {
        /// The setting that named the file.
        origin: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but is unusable.
    #[error("{origin} ({}): {problem}", path.display())]
    Invalid {
        /// The setting that named the file.
        origin: String,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
    /// `--require-tls` without TLS (normally caught when the config is loaded).
    #[error(
        "--require-tls: TLS is required but no certificate is configured: set --tls-cert and --tls-key"
    )]
    Required,
}

/// The crypto provider of every rustls config Portcullis builds: ring, as the redis crate's
/// rustls is built with it (a second provider would only add code and ambiguity).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`crypto_provider`] as the process default, for libraries that build their own
/// rustls configs from it (the redis crate does, for `rediss://`). Idempotent: keeps whatever
/// was installed first.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Whether an address only this host can reach.
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// TLS for the gRPC port as the config says: `None` for plaintext. Loads the TLS material (an
/// error for any unreadable or unusable file), starts the poller that reloads it until `stop`
/// resolves, and warns once when plaintext is served on an address other hosts can reach
/// (`local`); with `--require-tls` that is an error.
pub fn open(
    config: &TlsConfig,
    local: Option<SocketAddr>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<Arc<ReloadingTls>>, TlsError> {
    install_crypto_provider();
    let Some(settings) = &config.server else {
        if config.require {
            return Err(TlsError::Required);
        }
        if let Some(addr) = local.filter(|a| !is_loopback(*a)) {
            tracing::warn!(
                %addr,
                "SERVING gRPC IN PLAINTEXT ON A NON-LOOPBACK ADDRESS: passwords, tokens and \
                 admin calls cross the network unencrypted and any host that reaches the \
                 port can call it. Set --tls-cert and --tls-key (and --tls-client-ca for \
                 mTLS), or --require-tls to refuse to start like this"
            );
        }
        return Ok(None);
    };
    let tls = Arc::new(ReloadingTls::open(settings, crypto_provider())?);
    tracing::info!(
        cert = %settings.cert.path.display(),
        leaf_sha256 = %files::fingerprint(&tls.current_cert()),
        mtls = tls.mutual(),
        reload_poll = ?config.reload_poll,
        "gRPC TLS on (TLS 1.3 and 1.2, ALPN h2)"
    );
    tokio::spawn(tls.clone().watch(config.reload_poll, stop));
    Ok(Some(tls))
}
