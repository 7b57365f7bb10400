//! The key-set file ([`KeyRing::load_file`]): TOML `[[key]]` tables parsed into a [`KeyRing`].

use std::path::Path;

use zeroize::Zeroizing;

use super::key::{
    Key, KeyAlgorithm, KeyRingError, KeyState, build_ed25519_private, build_ed25519_public,
    build_hs256, check_kid, invalid,
};
use super::key_files::{StampingReader, trim_one_newline};
use super::keyring::{KeyRing, assemble};

/// The fields a `[[key]]` table may have, listed when an unknown one is met.
const FIELDS: &str =
    "kid, algorithm, state, secret, secret_file, private_key_file, public_key_file";

/// An unknown field's name as it may be printed: a misplaced secret can end up as a key, so
/// only short identifier-like names (far shorter than any accepted secret) are echoed.
fn shown_name(name: &str) -> String {
    let plain = name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        name.to_owned()
    } else {
        "<name not shown>".to_owned()
    }
}

/// "key set FILE[, key KID | , entry #N][, field `F`]".
fn file_context(file: &Path, key: Option<&str>, entry: usize, field: Option<&str>) -> String {
    let mut s = format!("key set {}", file.display());
    match key {
        Some(kid) => s.push_str(&format!(", key {kid:?}")),
        None if entry > 0 => s.push_str(&format!(", entry #{entry}")),
        None => {}
    }
    if let Some(field) = field {
        s.push_str(&format!(", field `{field}`"));
    }
    s
}

impl KeyRing {
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
}

pub(super) fn load_key_set(
    file: &Path,
    reader: &mut StampingReader,
) -> Result<KeyRing, KeyRingError> {
    let bytes = reader.read(file).map_err(|source| KeyRingError::Io {
        context: "key set".to_owned(),
        path: file.to_owned(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid(file_context(file, None, 0, None), "not UTF-8 text"))?;
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| {
        // Only the message and the line: toml's full rendering quotes the source line, which
        // may hold an inline secret.
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or("").matches('\n').count() + 1);
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        invalid(
            file_context(file, None, 0, None),
            format!("not valid TOML{at}: {}", e.message().trim()),
        )
    })?;
    let entries = match doc.remove("key") {
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => {
            return Err(invalid(
                file_context(file, None, 0, Some("key")),
                "must be a list of [[key]] tables",
            ));
        }
        None => Vec::new(),
    };
    if let Some(name) = doc.keys().next() {
        return Err(invalid(
            file_context(file, None, 0, Some(&shown_name(name))),
            "unknown top-level field (only [[key]] tables are allowed)",
        ));
    }
    if entries.is_empty() {
        return Err(invalid(
            file_context(file, None, 0, Some("key")),
            "no [[key]] entries",
        ));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let mut keys = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let toml::Value::Table(table) = entry else {
            return Err(invalid(
                file_context(file, None, i + 1, Some("key")),
                "must be a [[key]] table",
            ));
        };
        keys.push(parse_entry(table, file, i + 1, base, reader)?);
    }
    assemble(keys, &format!("key set {}", file.display()))
}

/// Removes `name` from `table` as a string; `None` when absent.
fn take_string(
    table: &mut toml::Table,
    name: &str,
    context: impl Fn(&str) -> String,
) -> Result<Option<String>, KeyRingError> {
    match table.remove(name) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(context(name), "must be a string")),
    }
}

fn parse_entry(
    mut table: toml::Table,
    file: &Path,
    entry: usize,
    base: &Path,
    reader: &mut StampingReader,
) -> Result<Key, KeyRingError> {
    // The kid first, so that every later message can name it.
    let kid = take_string(&mut table, "kid", |f| {
        file_context(file, None, entry, Some(f))
    })?
    .ok_or_else(|| invalid(file_context(file, None, entry, Some("kid")), "is required"))?;
    check_kid(&kid).map_err(|p| invalid(file_context(file, None, entry, Some("kid")), p))?;
    let ctx = |field: &str| file_context(file, Some(&kid), entry, Some(field));

    let algorithm = match take_string(&mut table, "algorithm", ctx)?.as_deref() {
        Some("HS256") => KeyAlgorithm::Hs256,
        Some("EdDSA") => KeyAlgorithm::EdDsa,
        Some(_) => return Err(invalid(ctx("algorithm"), "must be \"HS256\" or \"EdDSA\"")),
        None => {
            return Err(invalid(
                ctx("algorithm"),
                "is required (\"HS256\" or \"EdDSA\")",
            ));
        }
    };
    let state = match take_string(&mut table, "state", ctx)?.as_deref() {
        Some("active") => KeyState::Active,
        Some("verify") => KeyState::VerifyOnly,
        Some(_) => return Err(invalid(ctx("state"), "must be \"active\" or \"verify\"")),
        None => {
            return Err(invalid(
                ctx("state"),
                "is required (\"active\" or \"verify\")",
            ));
        }
    };
    let secret = take_string(&mut table, "secret", ctx)?.map(Zeroizing::new);
    let secret_file = take_string(&mut table, "secret_file", ctx)?;
    let private_key_file = take_string(&mut table, "private_key_file", ctx)?;
    let public_key_file = take_string(&mut table, "public_key_file", ctx)?;
    if let Some(name) = table.keys().next() {
        return Err(invalid(
            ctx(&shown_name(name)),
            format!("unknown field (known: {FIELDS})"),
        ));
    }

    let mut read = |field: &str, name: &str| -> Result<Zeroizing<Vec<u8>>, KeyRingError> {
        let path = base.join(name);
        reader.read(&path).map_err(|source| KeyRingError::Io {
            context: ctx(field),
            path,
            source,
        })
    };
    match algorithm {
        KeyAlgorithm::Hs256 => {
            for (field, given) in [
                ("private_key_file", private_key_file.is_some()),
                ("public_key_file", public_key_file.is_some()),
            ] {
                if given {
                    return Err(invalid(
                        ctx(field),
                        "is for EdDSA keys; HS256 keys take secret_file",
                    ));
                }
            }
            let (field, material) = match (secret, secret_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        ctx("secret"),
                        "give either `secret` or `secret_file`, not both",
                    ));
                }
                (Some(mut inline), None) => {
                    tracing::warn!(
                        file = %file.display(),
                        kid = %kid,
                        "HS256 secret given inline in the key set; prefer secret_file"
                    );
                    (
                        "secret",
                        Zeroizing::new(std::mem::take(&mut *inline).into_bytes()),
                    )
                }
                (None, Some(name)) => {
                    let mut bytes = read("secret_file", &name)?;
                    trim_one_newline(&mut bytes);
                    ("secret_file", bytes)
                }
                (None, None) => {
                    return Err(invalid(
                        ctx("secret_file"),
                        "is required for an HS256 key (or `secret`)",
                    ));
                }
            };
            build_hs256(kid.clone(), &material, state).map_err(|p| invalid(ctx(field), p))
        }
        KeyAlgorithm::EdDsa => {
            for (field, given) in [
                ("secret", secret.is_some()),
                ("secret_file", secret_file.is_some()),
            ] {
                if given {
                    return Err(invalid(
                        ctx(field),
                        "is for HS256 keys; EdDSA keys take private_key_file",
                    ));
                }
            }
            let (field, name) = match (private_key_file, public_key_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        ctx("public_key_file"),
                        "give either `private_key_file` or `public_key_file`, not both",
                    ));
                }
                (Some(name), None) => ("private_key_file", name),
                (None, Some(_)) if state == KeyState::Active => {
                    return Err(invalid(
                        ctx("public_key_file"),
                        "an active key signs, so it needs `private_key_file`",
                    ));
                }
                (None, Some(name)) => ("public_key_file", name),
                (None, None) => {
                    return Err(invalid(
                        ctx("private_key_file"),
                        "is required for an EdDSA key (verify-only keys may give `public_key_file`)",
                    ));
                }
            };
            let bytes = read(field, &name)?;
            let pem =
                std::str::from_utf8(&bytes).map_err(|_| invalid(ctx(field), "not PEM text"))?;
            let built = if field == "private_key_file" {
                build_ed25519_private(kid.clone(), pem, state)
            } else {
                build_ed25519_public(kid.clone(), pem)
            };
            built.map_err(|p| invalid(ctx(field), p))
        }
    }
}
