//! Redis credentials and TLS material: ACL user, password (from the environment or a file),
//! CA bundle and client certificate.

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::secrets::{read_small, secret};
use super::settings::{REDIS_CA_FILE, REDIS_CLIENT_CERT, REDIS_CLIENT_KEY, REDIS_USERNAME};
use super::{ConfigError, EnvSource, invalid, pick};
use crate::store::redis::{RedisSecurity, RedisTarget};

/// The Redis security flags, flattened into the command line.
#[derive(Debug, Default, clap::Args)]
pub(super) struct RedisFlags {
    /// PEM bundle of the CAs that sign Redis's certificates (rediss:// only); the password comes
    /// from PORTCULLIS_REDIS_PASSWORD or PORTCULLIS_REDIS_PASSWORD_FILE, the ACL user from
    /// PORTCULLIS_REDIS_USERNAME
    #[arg(long = "redis-ca-file", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate presented to Redis
    #[arg(long = "redis-client-cert", value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// PEM key of the Redis client certificate
    #[arg(long = "redis-client-key", value_name = "FILE")]
    client_key: Option<PathBuf>,
}

/// The Redis security keys of the `[store]` table.
#[derive(Debug, Default)]
pub(super) struct RedisFileKeys {
    pub username: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// A PEM file's bytes; `setting` names where the path came from.
fn pem(path: &str, setting: &str) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let text = read_small(std::path::Path::new(path))
        .map_err(|e| invalid(setting, format!("cannot read {path}: {e}")))?;
    if !text.contains("-----BEGIN ") {
        // Never quote the content: it may be a key.
        return Err(invalid(setting, format!("{path} is not a PEM file")));
    }
    Ok(Zeroizing::new(text.as_bytes().to_vec()))
}

fn path_text(p: Option<PathBuf>) -> Option<String> {
    p.map(|p| p.to_string_lossy().into_owned())
}

/// Resolves the security settings for the Redis store `target` (`None`: the memory store); they
/// need a Redis store, and TLS material needs `rediss://` URLs.
pub(super) fn resolve(
    flags: RedisFlags,
    file: RedisFileKeys,
    env: &dyn EnvSource,
    target: Option<&RedisTarget>,
) -> Result<RedisSecurity, ConfigError> {
    let username = pick(&REDIS_USERNAME, None, env, file.username);
    let password = secret(env, "PORTCULLIS_REDIS_PASSWORD")?;
    let ca = pick(&REDIS_CA_FILE, path_text(flags.ca_file), env, file.ca_file);
    let cert = pick(
        &REDIS_CLIENT_CERT,
        path_text(flags.client_cert),
        env,
        file.client_cert,
    );
    let key = pick(
        &REDIS_CLIENT_KEY,
        path_text(flags.client_key),
        env,
        file.client_key,
    );
    let anything =
        username.is_some() || password.is_some() || ca.is_some() || cert.is_some() || key.is_some();
    let urls: &[String] = match target {
        Some(RedisTarget::Single(url)) => std::slice::from_ref(url),
        Some(RedisTarget::Cluster(seeds)) => seeds,
        None if anything => {
            return Err(invalid(
                "Redis credentials or TLS settings",
                "are set but no Redis store is (--redis-url or --redis-cluster)",
            ));
        }
        None => return Ok(RedisSecurity::default()),
    };
    let tls_material = ca.is_some() || cert.is_some() || key.is_some();
    if tls_material && urls.iter().any(|u| !u.starts_with("rediss://")) {
        return Err(invalid(
            "Redis TLS settings",
            "need rediss:// URLs (TLS); the Redis URLs given are plain redis://",
        ));
    }
    let client_identity = match (cert, key) {
        (Some((cert, cert_origin)), Some((key, key_origin))) => {
            Some((pem(&cert, &cert_origin)?.to_vec(), pem(&key, &key_origin)?))
        }
        (None, None) => None,
        (Some((_, origin)), None) | (None, Some((_, origin))) => {
            return Err(invalid(
                origin,
                "a Redis client certificate needs both --redis-client-cert and --redis-client-key",
            ));
        }
    };
    Ok(RedisSecurity {
        username: username.map(|(u, _)| u),
        password,
        ca_pem: match ca {
            Some((path, origin)) => Some(pem(&path, &origin)?.to_vec()),
            None => None,
        },
        client_identity,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{SECRET_32, load};

    #[test]
    fn redis_credentials_and_tls_material() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "redis-secret-pw\n").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let (pw, ca) = (pw.to_str().unwrap(), ca.to_str().unwrap());
        let key = ("JWT_SECRET_KEY", SECRET_32);

        let c = load(
            &["--redis-url", "rediss://h:6380", "--redis-ca-file", ca],
            &[
                key,
                ("PORTCULLIS_REDIS_PASSWORD_FILE", pw),
                ("PORTCULLIS_REDIS_USERNAME", "svc"),
            ],
        )
        .unwrap();
        let s = &c.redis_security;
        assert_eq!(
            s.password.as_deref().map(String::as_str),
            Some("redis-secret-pw")
        );
        assert_eq!(s.username.as_deref(), Some("svc"));
        assert!(s.ca_pem.is_some() && s.client_identity.is_none());
        assert!(!format!("{c:?}").contains("redis-secret-pw"));

        let e = load(&["--redis-url", "redis://h", "--redis-ca-file", ca], &[key])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rediss://"), "{e}");
        let e = load(
            &["--redis-url", "rediss://h", "--redis-client-cert", ca],
            &[key],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--redis-client-key"), "{e}");
        let e = load(&[], &[("PORTCULLIS_REDIS_PASSWORD", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no Redis store") && !e.contains(": x"), "{e}");
        let e = load(
            &["--redis-url", "rediss://h", "--redis-ca-file", pw],
            &[key],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not a PEM file") && !e.contains("redis-secret-pw"),
            "{e}"
        );
    }
}
