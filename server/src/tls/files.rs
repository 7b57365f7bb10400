//! Reading the PEM files (through `secret_files`: size-capped, wiped, stamped) and turning them
//! into rustls keys, chains and client verifiers.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::TlsError;
use crate::config::TlsFile;
use crate::secret_files;
pub(super) use crate::secret_files::Stamp;

/// Certificates and CA bundles (a full public-CA bundle is about 250 KiB).
const MAX_CERT_FILE_LEN: u64 = 4 * 1024 * 1024;
/// A private key is a few KiB at most.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Which kind of file, for the size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Public: a certificate chain or a CA bundle.
    Certificates,
    /// Secret: a private key.
    Key,
}

impl Kind {
    const fn max_len(self) -> u64 {
        match self {
            Self::Certificates => MAX_CERT_FILE_LEN,
            Self::Key => MAX_KEY_FILE_LEN,
        }
    }
}

/// One read of a file: its stamp and its bytes (or why they could not be read).
#[derive(Debug)]
pub(super) struct Snapshot {
    pub stamp: Stamp,
    pub bytes: Result<Zeroizing<Vec<u8>>, TlsError>,
}

/// Reads `file` once, stamping what was read.
pub(super) fn snapshot(file: &TlsFile, kind: Kind) -> Snapshot {
    let read = secret_files::read_capped(&file.path, kind.max_len());
    Snapshot {
        stamp: Stamp::of(&file.path, &read),
        bytes: read.map_err(|source| TlsError::Read {
            origin: file.origin.clone(),
            path: file.path.clone(),
            source,
        }),
    }
}

fn problem(file: &TlsFile, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        origin: file.origin.clone(),
        path: file.path.clone(),
        problem: problem.into(),
    }
}

/// A PEM parse error as it may be shown: the kinds that quote file content are not echoed
/// (the file may be a private key).
fn pem_problem(error: &pem::Error, expected: &str) -> String {
    match error {
        pem::Error::NoItemsFound => format!("no {expected} found in the file"),
        pem::Error::SectionTooLarge => "a PEM section is too large".to_owned(),
        _ => format!("not valid PEM (expected {expected})"),
    }
}

/// The certificates of a PEM file, in order.
pub(super) fn parse_certificates(
    file: &TlsFile,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const EXPECTED: &str = "CERTIFICATE block";
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(file, pem_problem(&e, EXPECTED)))?;
    if certs.is_empty() {
        return Err(problem(file, format!("no {EXPECTED} found in the file")));
    }
    Ok(certs)
}

/// The certificate chain and private key as rustls serves them; the key must match the leaf.
pub(super) fn certified_key(
    cert: &TlsFile,
    cert_pem: &[u8],
    key: &TlsFile,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certificates(cert, cert_pem)?;
    // The decoded key is wiped when dropped; ring keeps its own copy inside the signing key.
    let der: Zeroizing<PrivateKeyDer<'static>> =
        Zeroizing::new(PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            problem(
                key,
                pem_problem(&e, "PRIVATE KEY block (PKCS#8, RSA or EC)"),
            )
        })?);
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|_| {
        problem(
            key,
            "unsupported private key (expected RSA, ECDSA P-256/P-384 or Ed25519)",
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(problem(
                key,
                format!(
                    "does not match the certificate in {} ({})",
                    cert.path.display(),
                    cert.origin
                ),
            ))
        }
        Err(e) => Err(problem(cert, format!("unusable certificate: {e}"))),
    }
}

/// A verifier that requires a client certificate issued by a CA of the bundle.
pub(super) fn client_verifier(
    ca: &TlsFile,
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates(ca, pem)? {
        roots
            .add(cert)
            .map_err(|e| problem(ca, format!("not a usable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| problem(ca, format!("cannot verify clients with it: {e}")))
}

/// The SHA-256 of the leaf certificate, as `openssl x509 -fingerprint -sha256` prints it
/// (without colons), for logs.
pub(super) fn fingerprint(key: &CertifiedKey) -> String {
    key.cert
        .first()
        .map(|leaf| {
            Sha256::digest(leaf.as_ref())
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect()
        })
        .unwrap_or_default()
}
