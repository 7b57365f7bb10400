//! The key ring (one signing key, verify-only others), from the environment or a random key.

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::key::{Key, KeyRingError, KeyState, build_hs256, invalid};
use super::key_files::{read_key_file, trim_one_newline};

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
