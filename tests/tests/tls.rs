//! gRPC over TLS and mTLS: certificates made here with rcgen, a real server in-process (and the
//! binary, for the start-up checks), clients through `PortcullisClient::connect_tls` and through
//! a hand-built rustls connector that records the certificate each connection was shown.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use portcullis_client::PortcullisClient;
use portcullis_server::config::Config;
use portcullis_tests::harness::{ManagedChild, free_port, portcullis_binary};
use portcullis_tests::server::InProcessServer;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Longest wait for a rotated certificate to be served (the poll is 1 s, a broken state 2).
const ROTATION_DEADLINE: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM, and the certificate in DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn leaf(&self, name: &str, purpose: ExtendedKeyUsagePurpose, serial: u64) -> Leaf {
        let sans = match purpose {
            ExtendedKeyUsagePurpose::ServerAuth => vec!["localhost".into(), "127.0.0.1".into()],
            _ => Vec::new(),
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from(serial));
        // A different validity per serial, like a renewed certificate.
        params.not_after = rcgen::date_time_ymd(2100 + (serial % 100) as i32, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn server_leaf(&self, serial: u64) -> Leaf {
        self.leaf("portcullis", ExtendedKeyUsagePurpose::ServerAuth, serial)
    }

    fn client_leaf(&self, name: &str) -> Leaf {
        self.leaf(name, ExtendedKeyUsagePurpose::ClientAuth, 1000)
    }
}

/// Files in a temporary directory.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Writes the server certificate and key (`tls.crt`, `tls.key`); returns the
    /// `--tls-cert`/`--tls-key` arguments.
    fn server_pair(&self, leaf: &Leaf) -> Vec<String> {
        let cert = self.write("tls.crt", &leaf.cert_pem);
        let key = self.write("tls.key", &leaf.key_pem);
        vec!["--tls-cert".into(), cert, "--tls-key".into(), key]
    }
}

// ---------------------------------------------------------------------------------------------
// Servers and clients
// ---------------------------------------------------------------------------------------------

/// A server run in-process on 127.0.0.1 (memory store) with `args`, stopped when dropped. No
/// environment: no admin token, no JWT key; and no admin port.
async fn start(args: &[String]) -> InProcessServer {
    let mut argv: Vec<String> = vec!["portcullis".into(), "--metrics-listen".into(), "off".into()];
    argv.extend(args.iter().cloned());
    let config = Config::load(&argv, &HashMap::<String, String>::new()).expect("valid config");
    InProcessServer::start(config).await
}

fn https(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

/// One call that needs a working connection.
async fn call(client: &PortcullisClient) -> Result<(), String> {
    client
        .check("acme", "search", "user-1", 1)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Connects with the client crate and makes one call.
async fn connect_and_call(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Leaf>,
) -> Result<(), String> {
    let identity = identity.map(|l| (l.cert_pem.as_bytes(), l.key_pem.as_bytes()));
    let client = PortcullisClient::connect_tls(https(addr), ca_pem, identity)
        .await
        .map_err(|e| format!("{e:?}"))?
        .with_timeout(Duration::from_secs(5));
    call(&client).await
}

fn client_config(roots: &[CertificateDer<'static>], tls12_only: bool) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS connection by hand: the stream, and the leaf certificate the server showed.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<(TlsStream<TcpStream>, CertificateDer<'static>)> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| std::io::Error::other("no peer certificate"))?;
    Ok((stream, leaf))
}

/// A tonic connector over [`tls_connect`] that records the certificate of every connection it
/// makes (so a test sees both the certificate and whether the channel reconnected).
#[derive(Clone)]
struct RecordingConnector {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    seen: Arc<Mutex<Vec<CertificateDer<'static>>>>,
}

impl tower::Service<http::Uri> for RecordingConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (stream, leaf) = tls_connect(this.addr, this.config.clone()).await?;
            this.seen.lock().unwrap().push(leaf);
            Ok(TokioIo::new(stream))
        })
    }
}

async fn recording_channel(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> (Channel, Arc<Mutex<Vec<CertificateDer<'static>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connector = RecordingConnector {
        addr,
        config,
        seen: seen.clone(),
    };
    // http://: the connector does TLS itself, tonic only speaks HTTP/2 over it.
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .expect("TLS channel");
    (channel, seen)
}

/// Polls new connections until the server shows `expected`; panics after the deadline.
async fn wait_for_cert(addr: SocketAddr, config: &Arc<ClientConfig>, expected: &Leaf, what: &str) {
    let deadline = Instant::now() + ROTATION_DEADLINE;
    loop {
        let shown = tls_connect(addr, config.clone())
            .await
            .map(|(_, leaf)| leaf);
        if shown.as_ref().ok() == Some(&expected.der) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: new connections still not shown the new certificate after \
             {ROTATION_DEADLINE:?} (last: {:?})",
            shown.map(|_| "another certificate")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_calls_succeed_with_the_ca_and_plaintext_is_refused() {
    let ca = Ca::new("Portcullis Test CA");
    let leaf = ca.server_leaf(1);
    let files = Files::new();
    let server = start(&files.server_pair(&leaf)).await;

    connect_and_call(server.addr, &ca.pem(), None)
        .await
        .expect("TLS call with the right CA");

    // The server's ALPN is h2, and TLS 1.2 still works.
    let (stream, shown) = tls_connect(server.addr, client_config(&[ca.der()], false))
        .await
        .expect("TLS 1.3 handshake");
    assert_eq!(shown, leaf.der);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let (stream, _) = tls_connect(server.addr, client_config(&[ca.der()], true))
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // Another CA's client does not trust the server.
    let stranger = Ca::new("Some Other CA");
    let refused = connect_and_call(server.addr, &stranger.pem(), None).await;
    assert!(refused.is_err(), "a client trusting another CA got through");

    // Plaintext HTTP/2 to the TLS port fails.
    let plain = async {
        let client = PortcullisClient::connect(format!("http://{}", server.addr))
            .await
            .map_err(|e| format!("{e:?}"))?
            .with_timeout(Duration::from_secs(3));
        call(&client).await
    };
    let plain = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("a plaintext call to the TLS port must fail fast, not hang");
    assert!(plain.is_err(), "a plaintext call to the TLS port succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_neither_blocks_others_nor_outlives_the_handshake_timeout() {
    let ca = Ca::new("Portcullis Test CA");
    let files = Files::new();
    let config = files.write("p.toml", "[tls]\nhandshake_timeout = \"500ms\"\n");
    let mut args = files.server_pair(&ca.server_leaf(1));
    args.extend(["--config".into(), config]);
    let server = start(&args).await;

    // Connects and never says a word.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    connect_and_call(server.addr, &ca.pem(), None)
        .await
        .expect("a handshake must not wait for another");

    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection must be dropped after the handshake timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the connection closed, read {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The transport bounds hold over TLS too: a client that completes the handshake and then
/// says nothing is closed after `transport.silent_timeout`, and one idle after its preface
/// after `transport.idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_tls_connections_are_closed() {
    use portcullis_tests::harness::h2::{client_preface, settings_ack};
    use tokio::io::AsyncWriteExt;

    let ca = Ca::new("Portcullis Test CA");
    let files = Files::new();
    let config = files.write(
        "p.toml",
        "[transport]\nsilent_timeout = \"1s\"\nidle_timeout = \"1s\"\n",
    );
    let mut args = files.server_pair(&ca.server_leaf(1));
    args.extend(["--config".into(), config]);
    let server = start(&args).await;
    let client = client_config(&[ca.der()], false);

    let (mut silent, _) = tls_connect(server.addr, client.clone()).await.unwrap();
    let (mut idle, _) = tls_connect(server.addr, client).await.unwrap();
    idle.write_all(&client_preface()).await.unwrap();
    idle.write_all(&settings_ack()).await.unwrap();
    connect_and_call(server.addr, &ca.pem(), None)
        .await
        .expect("other clients are served");
    for (what, stream) in [("silent", &mut silent), ("idle", &mut idle)] {
        let mut buf = vec![0u8; 16 * 1024];
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the {what} TLS connection stayed open");
    }
}

// ---------------------------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_only_certificates_from_the_client_ca() {
    let server_ca = Ca::new("Portcullis Server CA");
    let client_ca = Ca::new("Platform Client CA");
    let other_ca = Ca::new("Somebody Else's CA");
    let files = Files::new();
    let mut args = files.server_pair(&server_ca.server_leaf(1));
    args.extend([
        "--tls-client-ca".into(),
        files.write("client-ca.crt", &client_ca.pem()),
    ]);
    let server = start(&args).await;
    let ca = server_ca.pem();

    let none = connect_and_call(server.addr, &ca, None).await;
    assert!(none.is_err(), "a client without a certificate got through");

    let foreign = other_ca.client_leaf("intruder");
    let wrong = connect_and_call(server.addr, &ca, Some(&foreign)).await;
    assert!(wrong.is_err(), "a certificate from another CA got through");

    // The refusal is the handshake's: the server's alert reaches the raw client at once.
    let (mut stream, _) = tls_connect(server.addr, client_config(&[server_ca.der()], false))
        .await
        .expect("TLS 1.3: the client finishes its side before the server judges it");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server must not keep an unauthenticated connection open");
    let error = read.expect_err("the server must refuse a client without a certificate");
    assert!(
        format!("{error}").contains("CertificateRequired"),
        "unexpected refusal: {error}"
    );

    let member = client_ca.client_leaf("billing");
    connect_and_call(server.addr, &ca, Some(&member))
        .await
        .expect("a certificate from the client CA is admitted");
}

// ---------------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_reach_new_connections_and_spare_open_ones() {
    let ca = Ca::new("Portcullis Test CA");
    let first = ca.server_leaf(1);
    let files = Files::new();
    let server = start(&files.server_pair(&first)).await;
    let config = client_config(&[ca.der()], false);

    // An open HTTP/2 connection, with the first certificate.
    let (channel, seen) = recording_channel(server.addr, config.clone()).await;
    let open = PortcullisClient::from_channel(channel).with_timeout(Duration::from_secs(5));
    call(&open).await.expect("call before the rotation");
    assert_eq!(*seen.lock().unwrap(), vec![first.der.clone()]);

    // cert-manager writes a renewed certificate (new key, serial and validity): first the
    // certificate, then the key, as a non-atomic writer would.
    let second = ca.server_leaf(2);
    assert_ne!(second.der, first.der);
    files.write("tls.crt", &second.cert_pem);
    tokio::time::sleep(Duration::from_millis(300)).await;
    files.write("tls.key", &second.key_pem);
    wait_for_cert(server.addr, &config, &second, "after the rotation").await;

    // The open connection carried on: same connection, still answering.
    call(&open)
        .await
        .expect("call on the open connection after the rotation");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the channel had to reconnect: the open connection was dropped"
    );

    // A broken file keeps the certificate in force.
    files.write(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, shown) = tls_connect(server.addr, config.clone())
        .await
        .expect("the server still handshakes with a broken file on disk");
    assert_eq!(shown, second.der, "a broken file replaced the certificate");
    call(&open).await.expect("call with a broken file on disk");

    // And the next good one is picked up.
    let third = ca.server_leaf(3);
    files.write("tls.key", &third.key_pem);
    files.write("tls.crt", &third.cert_pem);
    wait_for_cert(server.addr, &config, &third, "after fixing the file").await;
    call(&open).await.expect("call after the second rotation");
}

// ---------------------------------------------------------------------------------------------
// Start-up checks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_key_stops_the_start_without_echoing_it() {
    let ca = Ca::new("Portcullis Test CA");
    let files = Files::new();
    let mut args = files.server_pair(&ca.server_leaf(1));
    let marker = "SECRETKEYMATERIAL0123456789";
    files.write(
        "tls.key",
        &format!("-----BEGIN PRIVATE KEY-----\n{marker}!!\n-----END PRIVATE KEY-----\n"),
    );
    args.extend(["--metrics-listen".into(), "off".into()]);
    let mut argv: Vec<String> = vec!["portcullis".into()];
    argv.extend(args);
    let config = Config::load(&argv, &HashMap::<String, String>::new()).unwrap();
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        portcullis_server::run(config, listener, std::future::pending()),
    )
    .await
    .expect("a broken key must stop the start");
    let error = result
        .expect_err("a broken key must stop the start")
        .to_string();
    assert!(error.contains("--tls-key"), "{error}");
    assert!(!error.contains(marker), "the key file leaked into: {error}");
}

/// Runs the binary with `args` until it exits or `until` says it has seen enough (given the log
/// so far); returns the exit code (None: it was still running, and was killed) and the log.
fn run_binary(args: &[&str], until: impl Fn(&str) -> bool) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("portcullis.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(portcullis_binary());
    cmd.args(args)
        .args(["--metrics-listen", "off"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PORTCULLIS_") {
            cmd.env_remove(name);
        }
    }
    let mut child = ManagedChild::spawn(cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(status) = child.wait_timeout(Duration::from_millis(50)) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return (status.code(), text);
        }
        if until(&text) {
            // Give a late (or second) warning the chance to show.
            std::thread::sleep(Duration::from_millis(500));
            child.kill();
            return (None, std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "portcullis {args:?} neither exited nor got ready in 30 s:\n{text}"
        );
    }
}

#[test]
fn require_tls_without_a_certificate_refuses_to_start() {
    let (code, log) = run_binary(&["--require-tls"], |_| false);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("--require-tls") && log.contains("--tls-cert"),
        "{log}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    std::fs::File::create(&cert)
        .unwrap()
        .write_all(b"unused")
        .unwrap();
    let (code, log) = run_binary(&["--tls-cert", cert.to_str().unwrap()], |_| false);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--tls-key"), "{log}");
}

const PLAINTEXT_WARNING: &str = "PLAINTEXT ON A NON-LOOPBACK ADDRESS";

#[test]
fn plaintext_on_a_non_loopback_address_is_warned_about_once() {
    let wild = format!("0.0.0.0:{}", free_port());
    let (code, log) = run_binary(&["--listen", &wild], |log| log.contains(PLAINTEXT_WARNING));
    assert_eq!(code, None, "portcullis exited:\n{log}");
    assert_eq!(log.matches(PLAINTEXT_WARNING).count(), 1, "{log}");

    // Loopback: no warning.
    let local = SocketAddr::from((LOOPBACK, free_port()));
    let (code, log) = run_binary(&["--listen", &local.to_string()], |_| {
        std::net::TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok()
    });
    assert_eq!(code, None, "portcullis exited:\n{log}");
    assert!(!log.contains(PLAINTEXT_WARNING), "{log}");

    // With --require-tls a plaintext start is refused, whatever the address.
    let (code, log) = run_binary(&["--listen", &wild, "--require-tls"], |_| false);
    assert_eq!(code, Some(2), "{log}");
}
