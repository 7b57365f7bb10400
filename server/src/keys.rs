//! The service's keyspace: validation of caller-supplied identifiers, and the name of every
//! key the stores keep (counters, throttles, authentication records, audit streams).
//!
//! Keys are `rl:{<tenant>}:<resource>[:<key>]` for `Check`, `rlt:{<tenant>}:<kind>[:<id>]` for
//! the service's own throttles, `rle:{<domain>/<first entry>}[:<entry>…]` for Envoy
//! descriptors, `auth:{<tenant>}:<kind>:<id>` and `audit:{<tenant>}` for authentication. The
//! braces are a Redis Cluster hash tag: one tenant's (or one Envoy descriptor root's) keys share
//! a slot, so multi-key scripts stay legal, while different tenants spread over the cluster.
//! Every caller-supplied part is escaped, so no input can end the tag early, forge a separator
//! or reach another tenant's keys.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Longest accepted identifier, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Longest accepted Envoy descriptor value, in bytes: values are often request headers such as
/// `:path` with a query string, longer than an id.
pub const MAX_ENVOY_VALUE_LEN: usize = 4096;

/// The resource used when a request names none.
pub const DEFAULT_RESOURCE: &str = "default";

/// An identifier failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidId {
    /// The request field, e.g. `tenant_id` or `descriptors[1].entries[0].value`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Why `value` is not acceptable (at most `max_len` bytes, no control characters, non-empty
/// when `required`), or `None` when it is. Cheap enough for the hot path: callers build a
/// field name only when there is an error to report.
pub fn id_problem(value: &str, required: bool, max_len: usize) -> Option<String> {
    if required && value.is_empty() {
        Some("is required".into())
    } else if value.len() > max_len {
        Some(format!("is longer than {max_len} bytes"))
    } else if value.chars().any(char::is_control) {
        Some("contains a control character".into())
    } else {
        None
    }
}

/// Checks an identifier field of at most [`MAX_ID_LEN`] bytes.
pub fn validate_id(field: &str, value: &str, required: bool) -> Result<(), InvalidId> {
    match id_problem(value, required, MAX_ID_LEN) {
        None => Ok(()),
        Some(reason) => Err(InvalidId {
            field: field.to_owned(),
            reason,
        }),
    }
}

/// Appends `part` with the characters that structure a key percent-escaped.
fn push_escaped(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            '%' | '{' | '}' | ':' | '=' | '/' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            _ => out.push(c),
        }
    }
}

/// The counter key of a `Check`: `rl:{tenant}:resource`, plus `:key` when a key is given.
pub fn check_key(tenant: &str, resource: &str, key: &str) -> String {
    let mut out = String::with_capacity(8 + tenant.len() + resource.len() + key.len());
    out.push_str("rl:{");
    push_escaped(&mut out, tenant);
    out.push_str("}:");
    push_escaped(&mut out, resource);
    if !key.is_empty() {
        out.push(':');
        push_escaped(&mut out, key);
    }
    out
}

/// The counter key of one of the service's own throttles (e.g. logins per client IP):
/// `rlt:{tenant}:kind`, plus `:id` when given. A prefix of its own, so no `Check` resource can
/// share (or drain) a throttle's counter.
pub fn throttle_key(tenant: &str, kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(10 + tenant.len() + kind.len() + id.len());
    out.push_str("rlt:{");
    push_escaped(&mut out, tenant);
    out.push_str("}:");
    out.push_str(kind);
    if !id.is_empty() {
        out.push(':');
        push_escaped(&mut out, id);
    }
    out
}

/// The counter key of a throttle across all tenants (e.g. logins per client address):
/// `rlg:{id}:kind`. The id is the hash tag, so such keys spread over a Cluster; the prefix is
/// its own, so no tenant's key can share (or drain) one.
pub fn global_throttle_key(kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(10 + kind.len() + id.len());
    out.push_str("rlg:{");
    push_escaped(&mut out, id);
    out.push_str("}:");
    out.push_str(kind);
    out
}

/// The share of the keyspace a counter key counts against in the memory store's key caps: its
/// tenant for `Check` and tenant-throttle keys (`rl:{t}`, `rlt:{t}`), its domain for Envoy keys
/// (`rle:{domain`), one share for every throttle across tenants (`rlg:`). A slice of `key`, so
/// finding it costs no allocation.
pub fn key_owner(key: &str) -> &str {
    if key.starts_with("rlg:") {
        return "rlg:";
    }
    let Some(open) = key.find('{') else {
        return key;
    };
    let close = key[open..].find('}').map_or(key.len(), |i| open + i);
    if key.starts_with("rle:") {
        // The tag is `domain/first entry`; a domain holds no raw '/' (it is escaped).
        if let Some(slash) = key[open..close].find('/') {
            return &key[..open + slash];
        }
    }
    &key[..close]
}

/// An authentication key: `auth:{tenant}:kind:id`, with tenant and id escaped like counter
/// keys, so one tenant's auth keys share a Cluster slot (multi-key scripts stay legal) and no
/// id can reach another tenant's keys. `kind` is a fixed word chosen by the store.
pub fn auth_key(tenant: &str, kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(10 + tenant.len() + kind.len() + id.len());
    out.push_str("auth:{");
    push_escaped(&mut out, tenant);
    out.push_str("}:");
    out.push_str(kind);
    out.push(':');
    push_escaped(&mut out, id);
    out
}

/// The audit stream of a tenant: `audit:{tenant}`.
pub fn audit_key(tenant: &str) -> String {
    let mut out = String::with_capacity(8 + tenant.len());
    out.push_str("audit:{");
    push_escaped(&mut out, tenant);
    out.push('}');
    out
}

/// The counter key of an Envoy descriptor. The hash tag holds the domain and the first entry,
/// which in Envoy configs is the coarse dimension (a client, a tenant, a route); one request's
/// descriptors may therefore live on different Cluster slots.
pub fn envoy_key<'a>(
    domain: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("rle:{");
    push_escaped(&mut out, domain);
    let mut first = true;
    for (k, v) in entries {
        if first {
            out.push('/');
        } else {
            out.push(':');
        }
        push_escaped(&mut out, k);
        out.push('=');
        push_escaped(&mut out, v);
        if first {
            out.push('}');
            first = false;
        }
    }
    if first {
        out.push('}');
    }
    out
}

/// The revocation feed. Deliberately one global key (one Cluster slot): revocations are rare
/// (logouts, password changes, admin calls), and every replica tails one stream instead of one
/// per tenant. Entries carry the tenant as data, so no tenant can read or write another's
/// sessions through it.
pub const REVOCATIONS_KEY: &str = "auth:revocations";

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The id of the username index entry: hex SHA-256 of the username, so keys have a fixed
/// length and a key dump does not list usernames in clear.
pub fn username_digest(username: &str) -> String {
    hex(&Sha256::digest(username.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_keys_tag_the_tenant() {
        assert_eq!(check_key("acme", "search", ""), "rl:{acme}:search");
        assert_eq!(check_key("acme", "search", "u1"), "rl:{acme}:search:u1");
    }

    #[test]
    fn structural_characters_cannot_cross_tenants() {
        // Without escaping, tenant "a}:x" + resource "y" and tenant "a" + resource "x}:y"-like
        // inputs could collide or move the hash tag.
        let k = check_key("a}:{b", "r:1", "k%");
        assert_eq!(k, "rl:{a%7D%3A%7Bb}:r%3A1:k%25");
        assert_ne!(check_key("a", "b:c", ""), check_key("a", "b", "c"));
        assert_ne!(check_key("a:b", "c", ""), check_key("a", "b:c", ""));
        assert_eq!(k.matches('{').count(), 1);
        assert_eq!(k.matches('}').count(), 1);
    }

    #[test]
    fn global_throttle_keys_tag_the_id() {
        assert_eq!(
            global_throttle_key("login", "10.0.0.1"),
            "rlg:{10.0.0.1}:login"
        );
        assert_eq!(
            global_throttle_key("login", "2001:db8::/64"),
            "rlg:{2001%3Adb8%3A%3A%2F64}:login"
        );
        assert_ne!(
            global_throttle_key("login", "t"),
            throttle_key("t", "login", "")
        );
    }

    #[test]
    fn owners_are_tenants_and_envoy_domains() {
        assert_eq!(key_owner(&check_key("acme", "search", "u1")), "rl:{acme");
        assert_eq!(key_owner(&check_key("a}:{b", "r", "")), "rl:{a%7D%3A%7Bb");
        assert_eq!(key_owner(&throttle_key("acme", "login", "")), "rlt:{acme");
        assert_ne!(
            key_owner(&check_key("acme", "x", "")),
            key_owner(&check_key("acmex", "x", ""))
        );
        let envoy = envoy_key("edge", [("client", "c1"), ("path", "/p")]);
        assert_eq!(key_owner(&envoy), "rle:{edge");
        assert_eq!(
            key_owner(&envoy_key("edge", [("client", "c2")])),
            key_owner(&envoy)
        );
        assert_eq!(key_owner(&envoy_key("ed/ge", [])), "rle:{ed%2Fge");
        assert_eq!(key_owner(&global_throttle_key("login", "10.0.0.1")), "rlg:");
    }

    #[test]
    fn envoy_keys_tag_domain_and_first_entry() {
        let k = envoy_key("edge", [("client", "c1"), ("path", "/login")]);
        assert_eq!(k, "rle:{edge/client=c1}:path=%2Flogin");
        assert_eq!(envoy_key("edge", []), "rle:{edge}");
        assert_ne!(
            envoy_key("edge", [("a", "b=c")]),
            envoy_key("edge", [("a=b", "c")])
        );
    }

    #[test]
    fn auth_keys_tag_the_tenant_and_escape_ids() {
        assert_eq!(auth_key("acme", "user", "u1"), "auth:{acme}:user:u1");
        let k = auth_key("a}:{b", "session", "s:{x}");
        assert_eq!(k, "auth:{a%7D%3A%7Bb}:session:s%3A%7Bx%7D");
        assert_eq!(k.matches('{').count(), 1);
        assert_ne!(auth_key("a:b", "user", "c"), auth_key("a", "user", "b:c"));
        assert_eq!(audit_key("a{b"), "audit:{a%7Bb}");
    }

    #[test]
    fn validation_names_the_field_and_reason() {
        assert!(validate_id("tenant_id", "acme", true).is_ok());
        assert!(validate_id("key", "", false).is_ok());
        let e = validate_id("tenant_id", "", true).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("tenant_id", "is required")
        );
        let e = validate_id("key", &"x".repeat(257), false).unwrap_err();
        assert_eq!(e.reason, "is longer than 256 bytes");
        assert!(validate_id("key", &"x".repeat(256), false).is_ok());
        let e = validate_id("resource", "a\nb", false).unwrap_err();
        assert_eq!(e.reason, "contains a control character");
    }

    #[test]
    fn username_digest_is_hex_sha256() {
        assert_eq!(
            username_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa5]), "000fa5");
    }
}
