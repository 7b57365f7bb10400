//! One signing or verifying key (HS256 secret, Ed25519 PEM), its kid checks, and [`KeyRingError`].

use std::fmt;
use std::io;
use std::path::PathBuf;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{DecodingKey, EncodingKey};

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for at least the hash size (256 bits).
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// A kid is an identifier echoed into JWKS and logs, not a place for data.
const MAX_KID_LEN: usize = 128;

/// Why keys could not be loaded. Messages name the source, the kid and the field; they never
/// contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// A key or a key set is unusable.
    #[error("{context}: {problem}")]
    Invalid {
        /// Where: file or variable, kid, field.
        context: String,
        /// What is wrong.
        problem: String,
    },
    /// A file could not be read.
    #[error("{context}: cannot read {}: {source}", path.display())]
    Io {
        /// Where the file was named.
        context: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The operating system's random source failed.
    #[error("the OS random number generator failed: {0}")]
    Random(getrandom::Error),
}

pub(super) fn invalid(context: impl Into<String>, problem: impl Into<String>) -> KeyRingError {
    KeyRingError::Invalid {
        context: context.into(),
        problem: problem.into(),
    }
}

/// The JWS algorithm a key is pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// HMAC-SHA-256 with a shared secret; never published.
    Hs256,
    /// Ed25519 signatures; the public half is published in the JWKS.
    EdDsa,
}

impl KeyAlgorithm {
    /// The JOSE name, as it appears in a token's `alg` header.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
        }
    }

    pub(super) const fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Hs256 => jsonwebtoken::Algorithm::HS256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Signs new tokens (and verifies); exactly one per ring.
    Active,
    /// Only verifies: a key being introduced or retired.
    VerifyOnly,
}

/// One key of a ring. Verify-only keys keep no private material at all.
pub struct Key {
    kid: String,
    algorithm: KeyAlgorithm,
    state: KeyState,
    /// jsonwebtoken's keys wipe their bytes on drop.
    signer: Option<EncodingKey>,
    verifier: DecodingKey,
    ed25519_public: Option<[u8; 32]>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// An HS256 key. Refuses secrets shorter than [`MIN_HS256_SECRET_LEN`] bytes.
    pub fn hs256(
        kid: impl Into<String>,
        secret: &[u8],
        state: KeyState,
    ) -> Result<Self, KeyRingError> {
        let kid = kid.into();
        let context = format!("key {kid:?}");
        check_kid(&kid).map_err(|p| invalid(&context, p))?;
        build_hs256(kid, secret, state).map_err(|p| invalid(context, p))
    }

    /// An Ed25519 key from a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
    pub fn ed25519_from_pkcs8_pem(
        kid: impl Into<String>,
        pem: &str,
        state: KeyState,
    ) -> Result<Self, KeyRingError> {
        let kid = kid.into();
        let context = format!("key {kid:?}");
        check_kid(&kid).map_err(|p| invalid(&context, p))?;
        build_ed25519_private(kid, pem, state).map_err(|p| invalid(context, p))
    }

    /// A verify-only Ed25519 key from an SPKI PEM public key (`openssl pkey -pubout`).
    pub fn ed25519_public_from_pem(
        kid: impl Into<String>,
        pem: &str,
    ) -> Result<Self, KeyRingError> {
        let kid = kid.into();
        let context = format!("key {kid:?}");
        check_kid(&kid).map_err(|p| invalid(&context, p))?;
        build_ed25519_public(kid, pem).map_err(|p| invalid(context, p))
    }

    /// The key id carried in token headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The only algorithm this key accepts.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Whether it signs.
    pub fn state(&self) -> KeyState {
        self.state
    }

    pub(super) fn signer(&self) -> Option<&EncodingKey> {
        self.signer.as_ref()
    }

    pub(super) fn verifier(&self) -> &DecodingKey {
        &self.verifier
    }

    pub(super) fn ed25519_public(&self) -> Option<&[u8; 32]> {
        self.ed25519_public.as_ref()
    }
}

pub(super) fn check_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(format!("kid must be 1 to {MAX_KID_LEN} characters"));
    }
    if !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("kid must be printable ASCII without spaces".to_owned());
    }
    Ok(())
}

pub(super) fn build_hs256(kid: String, secret: &[u8], state: KeyState) -> Result<Key, String> {
    if secret.len() < MIN_HS256_SECRET_LEN {
        // The length helps the operator; the secret itself never enters a message.
        return Err(format!(
            "HS256 secret is {} bytes; at least {MIN_HS256_SECRET_LEN} are required \
             (make one with `openssl rand -hex 32`)",
            secret.len()
        ));
    }
    Ok(Key {
        kid,
        algorithm: KeyAlgorithm::Hs256,
        state,
        signer: (state == KeyState::Active).then(|| EncodingKey::from_secret(secret)),
        verifier: DecodingKey::from_secret(secret),
        ed25519_public: None,
    })
}

pub(super) fn build_ed25519_private(
    kid: String,
    pem: &str,
    state: KeyState,
) -> Result<Key, String> {
    // SigningKey and the PKCS#8 document both wipe themselves on drop.
    let signing = SigningKey::from_pkcs8_pem(pem).map_err(|e| {
        format!("not a PKCS#8 PEM Ed25519 private key ({e}); `openssl genpkey -algorithm ed25519` makes one")
    })?;
    let signer = match state {
        KeyState::Active => {
            let der = signing
                .to_pkcs8_der()
                .map_err(|e| format!("cannot re-encode the Ed25519 key ({e})"))?;
            Some(EncodingKey::from_ed_der(der.as_bytes()))
        }
        KeyState::VerifyOnly => None,
    };
    ed25519_key(kid, signing.verifying_key(), state, signer)
}

pub(super) fn build_ed25519_public(kid: String, pem: &str) -> Result<Key, String> {
    let public = VerifyingKey::from_public_key_pem(pem).map_err(|e| {
        format!("not an SPKI PEM Ed25519 public key ({e}); `openssl pkey -pubout` makes one")
    })?;
    ed25519_key(kid, public, KeyState::VerifyOnly, None)
}

fn ed25519_key(
    kid: String,
    public: VerifyingKey,
    state: KeyState,
    signer: Option<EncodingKey>,
) -> Result<Key, String> {
    // A small-order point would accept forged signatures for many messages.
    if public.is_weak() {
        return Err("the Ed25519 public key is a weak (small-order) point".to_owned());
    }
    let raw = public.to_bytes();
    Ok(Key {
        kid,
        algorithm: KeyAlgorithm::EdDsa,
        state,
        signer,
        // jsonwebtoken wants the raw 32-byte public key here, not an SPKI document.
        verifier: DecodingKey::from_ed_der(&raw),
        ed25519_public: Some(raw),
    })
}
