//! The server's TLS configuration, following its files: the certificate and key are served by a
//! [`ResolvesServerCert`] over an [`ArcSwap`], so a reload changes what the next handshake
//! presents while established connections carry on; a changed client CA bundle rebuilds the
//! rustls config that the next accepted connection uses.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;
use super::files::{self, Kind, Snapshot, Stamp};
use crate::config::{ServerTls, TlsFile};
use crate::telemetry::metrics::TLS_RELOADS;

/// ALPN: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Hands every handshake the certificate in force now.
pub struct ReloadingCertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadingCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertResolver")
            .field("leaf_sha256", &files::fingerprint(&self.current.load()))
            .finish_non_exhaustive()
    }
}

impl ReloadingCertResolver {
    fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// The certificate chain and key in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A group of files read and reloaded together, remembering what was last applied and what
/// failed, so a broken state is reported once.
#[derive(Debug)]
struct Watched {
    files: Vec<(TlsFile, Kind)>,
    /// The files as last applied (or as last reported broken).
    applied: Vec<Stamp>,
    /// Files that failed to load at the previous poll. A rotation writes the certificate and
    /// the key one after the other, so a poll may see a new certificate with the old key; only
    /// a failure that is still there one poll later is reported.
    failing: Option<Vec<Stamp>>,
}

/// What a poll of one group found.
#[derive(Debug)]
pub enum Change<T> {
    /// Nothing changed.
    Unchanged,
    /// The files changed and loaded: apply `T`.
    Loaded(T),
    /// The files changed but do not load (yet): maybe a rotation half done; wait a poll.
    Settling,
    /// The files changed and have not loaded for a whole poll: report once, keep the old.
    Broken(TlsError),
}

impl Watched {
    fn new(files: Vec<(TlsFile, Kind)>) -> Self {
        Self {
            files,
            applied: Vec::new(),
            failing: None,
        }
    }

    fn read(&self) -> (Vec<Stamp>, Vec<Snapshot>) {
        let snaps: Vec<Snapshot> = self
            .files
            .iter()
            .map(|(file, kind)| files::snapshot(file, *kind))
            .collect();
        (snaps.iter().map(|s| s.stamp.clone()).collect(), snaps)
    }

    /// Loads the group once (at start: every error is fatal).
    fn load<T>(
        &mut self,
        build: impl FnOnce(&[(TlsFile, Kind)], &[&[u8]]) -> Result<T, TlsError>,
    ) -> Result<T, TlsError> {
        let (stamps, snaps) = self.read();
        let value = build_from(&self.files, snaps, build)?;
        self.applied = stamps;
        Ok(value)
    }

    fn poll<T>(
        &mut self,
        build: impl FnOnce(&[(TlsFile, Kind)], &[&[u8]]) -> Result<T, TlsError>,
    ) -> Change<T> {
        let (stamps, snaps) = self.read();
        if stamps == self.applied {
            self.failing = None;
            return Change::Unchanged;
        }
        match build_from(&self.files, snaps, build) {
            Ok(value) => {
                self.applied = stamps;
                self.failing = None;
                Change::Loaded(value)
            }
            Err(error) if self.failing.as_ref() == Some(&stamps) => {
                // Same broken files as a poll ago: report, then stay quiet until they change.
                self.applied = stamps;
                self.failing = None;
                Change::Broken(error)
            }
            Err(_) => {
                self.failing = Some(stamps);
                Change::Settling
            }
        }
    }
}

fn build_from<T>(
    files: &[(TlsFile, Kind)],
    snaps: Vec<Snapshot>,
    build: impl FnOnce(&[(TlsFile, Kind)], &[&[u8]]) -> Result<T, TlsError>,
) -> Result<T, TlsError> {
    let buffers = snaps
        .into_iter()
        .map(|s| s.bytes)
        .collect::<Result<Vec<_>, _>>()?;
    let slices: Vec<&[u8]> = buffers.iter().map(|b| b.as_slice()).collect();
    build(files, &slices)
}

fn build_key(files: &[(TlsFile, Kind)], bytes: &[&[u8]]) -> Result<CertifiedKey, TlsError> {
    files::certified_key(&files[0].0, bytes[0], &files[1].0, bytes[1])
}

/// What a poll did, for the log.
#[derive(Debug, Default)]
pub struct PollReport {
    /// The certificate was replaced; its leaf SHA-256.
    pub cert_reloaded: Option<String>,
    /// The client CA bundle was replaced.
    pub client_ca_reloaded: bool,
    /// Files that changed and do not load; the previous material stays in force.
    pub broken: Vec<TlsError>,
}

#[derive(Debug)]
struct WatchState {
    cert: Watched,
    client_ca: Option<Watched>,
}

/// The gRPC port's TLS, following its files.
pub struct ReloadingTls {
    provider: Arc<CryptoProvider>,
    resolver: Arc<ReloadingCertResolver>,
    config: ArcSwap<ServerConfig>,
    settings: ServerTls,
    state: Mutex<WatchState>,
}

impl fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("settings", &self.settings)
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<ReloadingCertResolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn build_verifier(
    provider: &Arc<CryptoProvider>,
    files: &[(TlsFile, Kind)],
    bytes: &[&[u8]],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    files::client_verifier(&files[0].0, bytes[0], provider)
}

impl ReloadingTls {
    /// Loads the certificate, key and client CA bundle; any problem is an error.
    pub fn open(settings: &ServerTls, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let mut cert = Watched::new(vec![
            (settings.cert.clone(), Kind::Certificates),
            (settings.key.clone(), Kind::Key),
        ]);
        let resolver = Arc::new(ReloadingCertResolver::new(cert.load(build_key)?));
        let mut client_ca = settings
            .client_ca
            .clone()
            .map(|ca| Watched::new(vec![(ca, Kind::Certificates)]));
        let verifier = match &mut client_ca {
            Some(watched) => Some(watched.load(|f, b| build_verifier(&provider, f, b))?),
            None => None,
        };
        let config = server_config(&provider, &resolver, verifier)?;
        Ok(Self {
            provider,
            resolver,
            config: ArcSwap::from_pointee(config),
            settings: settings.clone(),
            state: Mutex::new(WatchState { cert, client_ca }),
        })
    }

    /// The rustls config for the next connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// The certificate chain and key in force.
    pub fn current_cert(&self) -> Arc<CertifiedKey> {
        self.resolver.current()
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// Re-reads the files and swaps in whatever changed and loads. Blocking (file reads).
    pub fn reload_if_changed(&self) -> PollReport {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report = PollReport::default();
        match state.cert.poll(build_key) {
            Change::Loaded(key) => {
                report.cert_reloaded = Some(files::fingerprint(&key));
                self.resolver.current.store(Arc::new(key));
            }
            Change::Broken(error) => report.broken.push(error),
            Change::Unchanged | Change::Settling => {}
        }
        if let Some(watched) = &mut state.client_ca {
            match watched.poll(|f, b| build_verifier(&self.provider, f, b)) {
                Change::Loaded(verifier) => {
                    match server_config(&self.provider, &self.resolver, Some(verifier)) {
                        Ok(config) => {
                            self.config.store(Arc::new(config));
                            report.client_ca_reloaded = true;
                        }
                        Err(error) => report.broken.push(error),
                    }
                }
                Change::Broken(error) => report.broken.push(error),
                Change::Unchanged | Change::Settling => {}
            }
        }
        report
    }

    /// Polls every `every` (at least 10 ms) until `stop` resolves, logging reloads and
    /// failures (each broken state once).
    pub async fn watch(self: Arc<Self>, every: Duration, stop: impl Future<Output = ()>) {
        let this = Arc::clone(&self);
        let check = move || this.reload_if_changed();
        let report = move |outcome: Result<PollReport, _>| {
            let report = match outcome {
                Ok(report) => report,
                Err(error) => {
                    tracing::error!(%error, "TLS certificate reload task failed");
                    return;
                }
            };
            if let Some(sha256) = report.cert_reloaded {
                metrics::counter!(TLS_RELOADS, "outcome" => "ok").increment(1);
                tracing::info!(
                    cert = %self.settings.cert.path.display(),
                    leaf_sha256 = %sha256,
                    "TLS certificate reloaded; new connections get it, open ones carry on"
                );
            }
            if report.client_ca_reloaded {
                metrics::counter!(TLS_RELOADS, "outcome" => "ok").increment(1);
                tracing::info!("TLS client CA bundle reloaded");
            }
            for error in report.broken {
                metrics::counter!(TLS_RELOADS, "outcome" => "failed").increment(1);
                tracing::warn!(
                    %error,
                    "TLS files changed but do not load; the previous certificate and CA stay in force"
                );
            }
        };
        crate::periodic::poll_blocking(every, stop, check, report).await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn self_signed() -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn file(dir: &Path, name: &str, origin: &str) -> TlsFile {
        TlsFile {
            path: dir.join(name),
            origin: origin.to_owned(),
        }
    }

    fn settings(dir: &Path) -> ServerTls {
        ServerTls {
            cert: file(dir, "tls.crt", "--tls-cert"),
            key: file(dir, "tls.key", "--tls-key"),
            client_ca: None,
        }
    }

    fn write(dir: &Path, pair: &Pair) {
        std::fs::write(dir.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(dir.join("tls.key"), &pair.key).unwrap();
    }

    fn leaf(tls: &ReloadingTls) -> Vec<u8> {
        tls.current_cert().cert[0].to_vec()
    }

    fn quiet(report: &PollReport) -> bool {
        report.cert_reloaded.is_none() && !report.client_ca_reloaded && report.broken.is_empty()
    }

    #[test]
    fn a_half_done_rotation_waits_and_a_broken_file_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed();
        write(dir.path(), &first);
        let tls =
            ReloadingTls::open(&settings(dir.path()), super::super::crypto_provider()).unwrap();
        let original = leaf(&tls);
        assert!(quiet(&tls.reload_if_changed()));

        // New certificate, old key: not loadable yet, and not worth a warning yet.
        let second = self_signed();
        std::fs::write(dir.path().join("tls.crt"), &second.cert).unwrap();
        assert!(quiet(&tls.reload_if_changed()));
        assert_eq!(leaf(&tls), original);
        std::fs::write(dir.path().join("tls.key"), &second.key).unwrap();
        let report = tls.reload_if_changed();
        assert!(report.cert_reloaded.is_some() && report.broken.is_empty());
        let rotated = leaf(&tls);
        assert_ne!(rotated, original);

        // A broken file: quiet at first sight, reported at the next poll, then quiet.
        std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
        assert!(quiet(&tls.reload_if_changed()));
        let report = tls.reload_if_changed();
        assert_eq!(report.broken.len(), 1);
        assert!(report.broken[0].to_string().starts_with("--tls-cert"));
        assert!(quiet(&tls.reload_if_changed()));
        assert!(quiet(&tls.reload_if_changed()));
        assert_eq!(leaf(&tls), rotated, "the certificate in force stays");

        write(dir.path(), &first);
        assert!(tls.reload_if_changed().cert_reloaded.is_some());
        assert_eq!(leaf(&tls), original);
    }

    #[test]
    fn a_changed_client_ca_rebuilds_the_config_for_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &self_signed());
        std::fs::write(dir.path().join("ca.crt"), self_signed().cert).unwrap();
        let mut settings = settings(dir.path());
        settings.client_ca = Some(file(dir.path(), "ca.crt", "--tls-client-ca"));
        let tls = ReloadingTls::open(&settings, super::super::crypto_provider()).unwrap();
        assert!(tls.mutual());
        let before = tls.config();
        assert!(quiet(&tls.reload_if_changed()));
        assert!(Arc::ptr_eq(&before, &tls.config()));

        std::fs::write(dir.path().join("ca.crt"), self_signed().cert).unwrap();
        let report = tls.reload_if_changed();
        assert!(report.client_ca_reloaded && report.cert_reloaded.is_none());
        assert!(!Arc::ptr_eq(&before, &tls.config()));
        assert_eq!(tls.config().alpn_protocols, [b"h2".to_vec()]);
    }

    #[test]
    fn load_errors_name_the_setting_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed();
        write(dir.path(), &pair);
        let provider = super::super::crypto_provider();

        let other = self_signed();
        std::fs::write(dir.path().join("tls.key"), &other.key).unwrap();
        let e = ReloadingTls::open(&settings(dir.path()), provider.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-key") && e.contains("does not match"),
            "{e}"
        );

        let secret = "c2VjcmV0LWtleS1ieXRlcw";
        std::fs::write(
            dir.path().join("tls.key"),
            format!("-----BEGIN PRIVATE KEY-----\n{secret}%%\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let e = ReloadingTls::open(&settings(dir.path()), provider.clone())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-key") && !e.contains(secret), "{e}");

        std::fs::write(dir.path().join("tls.key"), pair.cert.as_bytes()).unwrap();
        let e = ReloadingTls::open(&settings(dir.path()), provider.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-key") && e.contains("no PRIVATE KEY block"),
            "{e}"
        );

        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        let e = ReloadingTls::open(&settings(dir.path()), provider)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-key") && e.contains("cannot read"),
            "{e}"
        );
    }
}
