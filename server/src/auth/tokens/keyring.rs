//! Signing and verifying keys: loaded from the environment or a key-set file, reloaded on change.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::key::{Key, KeyRingError, KeyState, build_hs256, invalid};
use super::key_files::{Stamp, StampingReader, read_key_file, stamp_of, trim_one_newline};
use super::key_set_file::load_key_set;
use crate::telemetry::metrics::JWT_KEYS;

/// Variable holding the HS256 secret that signs (the platform's dual-key convention).
pub const ENV_SECRET: &str = "JWT_SECRET_KEY";
/// Variable holding the previous HS256 secret, still accepted while a rotation is under way.
pub const ENV_SECRET_OLD: &str = "JWT_SECRET_KEY_OLD";
/// Suffix of the variable that names a file holding the value instead (`JWT_SECRET_KEY_FILE`).
pub const ENV_FILE_SUFFIX: &str = "_FILE";

/// Hashed in front of an environment secret to derive its kid, so that the published kid is not
/// a bare SHA-256 of the secret that could be matched against other systems' fingerprints.
const KID_DOMAIN: &[u8] = b"portcullis jwt kid v1\0";

/// The set of keys a replica signs and verifies with.
pub struct KeyRing {
    /// Held apart so that "exactly one signs" is true by construction.
    active: Key,
    verify_only: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("verify_only", &self.verify_only)
            .finish()
    }
}

impl KeyRing {
    /// A ring from keys: exactly one [`KeyState::Active`], kids unique.
    pub fn new(keys: Vec<Key>) -> Result<Self, KeyRingError> {
        assemble(keys, "key ring")
    }

    /// The platform's dual-key convention: `JWT_SECRET_KEY` (HS256, signs) and optionally
    /// `JWT_SECRET_KEY_OLD` (verify only), each also as `NAME_FILE` naming a file whose content
    /// is the secret (one trailing newline trimmed). Setting both forms of one variable is an
    /// error; an empty value counts as unset. The value is used as bytes, exactly as the Python
    /// services use it. The kid is the first 8 bytes, in hex, of
    /// SHA-256(`"portcullis jwt kid v1\0"` ‖ secret), so every replica derives the same one.
    /// `Ok(None)` when neither variable is set.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, KeyRingError> {
        let current = env_secret(env, ENV_SECRET)?;
        let old = env_secret(env, ENV_SECRET_OLD)?;
        let Some(current) = current else {
            if old.is_some() {
                return Err(invalid(
                    format!("environment variable {ENV_SECRET_OLD}"),
                    format!("is set but {ENV_SECRET} is not, so no key could sign"),
                ));
            }
            return Ok(None);
        };
        let current_kid = derive_kid(&current);
        let mut keys = vec![
            build_hs256(current_kid.clone(), &current, KeyState::Active)
                .map_err(|p| invalid(format!("environment variable {ENV_SECRET}"), p))?,
        ];
        if let Some(old) = old {
            // Old equal to new is a harmless leftover of a rotation; keep one key.
            if old.as_slice() != current.as_slice() {
                let old_kid = derive_kid(&old);
                if old_kid == current_kid {
                    return Err(invalid(
                        format!("environment variables {ENV_SECRET} and {ENV_SECRET_OLD}"),
                        "the two secrets derive the same kid",
                    ));
                }
                keys.push(
                    build_hs256(old_kid, &old, KeyState::VerifyOnly).map_err(|p| {
                        invalid(format!("environment variable {ENV_SECRET_OLD}"), p)
                    })?,
                );
            }
        }
        assemble(keys, "environment").map(Some)
    }

    /// Loads a key-set file (TOML), a list of `[[key]]` tables:
    ///
    /// ```toml
    /// [[key]]
    /// kid = "2026-11"             # printable ASCII, no spaces, at most 128 characters, unique
    /// algorithm = "HS256"         # "HS256" or "EdDSA": the only algorithm this key accepts
    /// state = "active"            # "active" (signs; exactly one key) or "verify" (verifies only)
    /// secret_file = "/run/secrets/jwt-2026-11"   # HS256: file holding the secret, >= 32 bytes,
    ///                                            # one trailing newline trimmed
    /// # secret = "..."            # HS256: the secret inline (discouraged: it sits in this file)
    ///
    /// [[key]]
    /// kid = "ed-2026-12"
    /// algorithm = "EdDSA"
    /// state = "verify"
    /// private_key_file = "ed-2026-12.pem"   # EdDSA: PKCS#8 PEM (openssl genpkey -algorithm ed25519)
    /// # public_key_file = "old.pub.pem"     # EdDSA, verify-only keys: SPKI PEM (openssl pkey -pubout)
    /// ```
    ///
    /// Relative paths are taken from the key-set file's folder. Unknown fields, a missing or
    /// duplicate kid, and any count of active keys but one are errors; every error names the
    /// file, the kid (or the entry number) and the field.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self, KeyRingError> {
        let mut reader = StampingReader::default();
        load_key_set(path.as_ref(), &mut reader)
    }

    /// A ring with one random 256-bit HS256 key, for a lone server with no key configured:
    /// its tokens die with the process and no other replica accepts them.
    pub fn generate_ephemeral() -> Result<Self, KeyRingError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut_slice()).map_err(KeyRingError::Random)?;
        let kid = format!("ephemeral-{}", derive_kid(secret.as_slice()));
        let key = build_hs256(kid, secret.as_slice(), KeyState::Active)
            .map_err(|p| invalid("ephemeral key", p))?;
        assemble(vec![key], "ephemeral key")
    }

    /// The key that signs.
    pub fn active(&self) -> &Key {
        &self.active
    }

    /// Every key: the active one first, then the verify-only ones in load order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.active).chain(&self.verify_only)
    }

    /// The key a token's `kid` names (the kid is untrusted input: only compared).
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys().find(|k| k.kid() == kid)
    }
}

/// Checks the ring invariants; `origin` prefixes every message.
pub(super) fn assemble(keys: Vec<Key>, origin: &str) -> Result<KeyRing, KeyRingError> {
    for (i, key) in keys.iter().enumerate() {
        if keys.iter().take(i).any(|k| k.kid() == key.kid()) {
            return Err(invalid(
                format!("{origin}, key {:?}, field `kid`", key.kid()),
                "the kid appears more than once",
            ));
        }
    }
    let (mut active, verify_only): (Vec<Key>, Vec<Key>) = keys
        .into_iter()
        .partition(|k| k.state() == KeyState::Active);
    let only = active.pop();
    match (only, active.is_empty()) {
        (Some(key), true) if key.signer().is_some() => Ok(KeyRing {
            active: key,
            verify_only,
        }),
        (Some(key), true) => Err(invalid(
            format!("{origin}, key {:?}, field `state`", key.kid()),
            "the active key has no private key to sign with",
        )),
        (None, _) => Err(invalid(
            format!("{origin}, field `state`"),
            "no key is active; exactly one must sign",
        )),
        (Some(last), false) => {
            let kids: Vec<&str> = active.iter().chain([&last]).map(|k| k.kid()).collect();
            Err(invalid(
                format!("{origin}, keys {kids:?}, field `state`"),
                "more than one key is active; exactly one may sign",
            ))
        }
    }
}

fn derive_kid(secret: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(KID_DOMAIN)
        .chain_update(secret)
        .finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// One secret from `NAME` or `NAME_FILE`.
fn env_secret(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, KeyRingError> {
    let file_var = format!("{name}{ENV_FILE_SUFFIX}");
    let direct = env(name).map(Zeroizing::new).filter(|v| !v.is_empty());
    let file = env(&file_var).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(invalid(
            format!("environment variables {name} and {file_var}"),
            "both are set; set only one",
        )),
        (Some(mut value), None) => {
            // Moves the buffer without copying it, so only one copy needs wiping.
            Ok(Some(Zeroizing::new(
                std::mem::take(&mut *value).into_bytes(),
            )))
        }
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let context = format!("environment variable {file_var}");
            let mut bytes = read_key_file(&path).map_err(|source| KeyRingError::Io {
                context,
                path,
                source,
            })?;
            trim_one_newline(&mut bytes);
            Ok(Some(bytes))
        }
        (None, None) => Ok(None),
    }
}

/// A key ring that follows its key-set file: readers take [`current`](Self::current), a poller
/// calls [`reload_if_changed`](Self::reload_if_changed).
pub struct ReloadingKeyRing {
    ring: ArcSwap<KeyRing>,
    path: Option<PathBuf>,
    /// The files the last load read (key set and the files it names), as they were then.
    /// The lock also keeps two reloads from racing.
    seen: Mutex<Vec<Stamp>>,
}

impl fmt::Debug for ReloadingKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingKeyRing")
            .field("path", &self.path)
            .field("ring", &*self.ring.load())
            .finish()
    }
}

impl ReloadingKeyRing {
    /// Loads the key-set file at `path` (see [`KeyRing::load_file`]) and remembers it for reloads.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, KeyRingError> {
        let path = path.into();
        let mut reader = StampingReader::default();
        let ring = load_key_set(&path, &mut reader)?;
        publish_key_gauges(&ring, None);
        Ok(Self {
            ring: ArcSwap::from_pointee(ring),
            path: Some(path),
            seen: Mutex::new(reader.stamps),
        })
    }

    /// A ring that never changes (keys from the environment, or ephemeral).
    pub fn fixed(ring: impl Into<Arc<KeyRing>>) -> Self {
        let ring = ring.into();
        publish_key_gauges(&ring, None);
        Self {
            ring: ArcSwap::new(ring),
            path: None,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// The key-set file followed, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The ring in force now; cheap, lock-free.
    pub fn current(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// Reloads when the key-set file or any file it names changed (modification time, length
    /// or SHA-256 of the content). `Ok(true)`: the new ring is in force. On error the previous
    /// ring stays in force; the same broken state is reported once, then `Ok(false)` until a
    /// file changes again.
    pub fn reload_if_changed(&self) -> Result<bool, KeyRingError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let unchanged = !seen.is_empty() && seen.iter().all(|old| stamp_of(&old.path).0 == *old);
        if unchanged {
            return Ok(false);
        }
        let mut reader = StampingReader::default();
        let result = load_key_set(path, &mut reader);
        *seen = reader.stamps;
        let ring = result?;
        publish_key_gauges(&ring, Some(&self.ring.load()));
        self.ring.store(Arc::new(ring));
        Ok(true)
    }

    /// Polls every `every` (at least 10 ms) until `stop` resolves, logging reloads and failures.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: impl Future<Output = ()>) {
        if self.path.is_none() {
            return;
        }
        let this = Arc::clone(&self);
        let check = move || this.reload_if_changed();
        let report = move |outcome: Result<Result<bool, KeyRingError>, _>| match outcome {
            Ok(Ok(true)) => tracing::info!(
                path = ?self.path,
                active_kid = %self.current().active().kid(),
                "JWT key set reloaded"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(
                %error,
                "JWT key set not reloaded; the previous keys stay in force"
            ),
            Err(error) => tracing::error!(%error, "JWT key set reload task failed"),
        };
        crate::periodic::poll_blocking(every, stop, check, report).await;
    }
}

/// Publishes the keys of `ring` as 1 and those only in `previous` as 0 (the [`JWT_KEYS`] gauge).
fn publish_key_gauges(ring: &KeyRing, previous: Option<&KeyRing>) {
    let state = |k: &Key| match k.state() {
        KeyState::Active => "active",
        KeyState::VerifyOnly => "verify",
    };
    if let Some(previous) = previous {
        for key in previous.keys() {
            metrics::gauge!(JWT_KEYS, "kid" => key.kid().to_owned(),
                "algorithm" => key.algorithm().as_str(), "state" => state(key))
            .set(0.0);
        }
    }
    for key in ring.keys() {
        metrics::gauge!(JWT_KEYS, "kid" => key.kid().to_owned(),
            "algorithm" => key.algorithm().as_str(), "state" => state(key))
        .set(1.0);
    }
}
