//! Connections to a single Redis or a Redis Cluster. Both pipeline concurrent calls over one
//! connection per node and reconnect on their own, so no pool is needed.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ClientTlsConfig, IntoConnectionInfo, TlsCertificates};
use zeroize::Zeroizing;

use crate::ratelimit::store::StoreError;

/// Credentials and TLS material for Redis beyond what the URL says: an ACL user and password
/// kept out of URLs (and so out of process listings), a private CA, and a client certificate
/// for Redis's `tls-auth-clients`. Never shown by `Debug`.
#[derive(Clone, Default)]
pub struct RedisSecurity {
    /// ACL user (Redis 6+); `None` is the `default` user.
    pub username: Option<String>,
    /// The password (`requirepass` or the ACL user's); overrides one in the URL.
    pub password: Option<Zeroizing<String>>,
    /// PEM bundle of the CAs that sign the Redis server certificates; `None` trusts the
    /// public web roots. Needs `rediss://` URLs.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key presented to Redis (mutual TLS).
    pub client_identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for RedisSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSecurity")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_identity.is_some())
            .finish()
    }
}

impl RedisSecurity {
    /// The TLS material for the redis crate, when any is configured.
    fn certificates(&self) -> Option<TlsCertificates> {
        if self.ca_pem.is_none() && self.client_identity.is_none() {
            return None;
        }
        Some(TlsCertificates {
            client_tls: self
                .client_identity
                .as_ref()
                .map(|(cert, key)| ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.to_vec(),
                }),
            root_cert: self.ca_pem.clone(),
        })
    }
}

/// Where Redis is.
#[derive(Clone)]
pub enum RedisTarget {
    /// One server (`redis://` or `rediss://`).
    Single(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisTarget {
    // URLs may carry a password: show only their hosts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(url) => write!(f, "Single({})", redact_url(url)),
            Self::Cluster(urls) => {
                let hosts: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
                write!(f, "Cluster({hosts:?})")
            }
        }
    }
}

/// The URL without credentials, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A live connection of either kind; cheap to clone (clones share the connection).
#[derive(Clone)]
pub enum RedisConnection {
    /// Multiplexed connection with automatic reconnection.
    Single(ConnectionManager),
    /// Cluster connection: routes by slot, follows MOVED/ASK, reloads scripts on NOSCRIPT.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl RedisConnection {
    /// Connects. A single node is connected lazily (the service starts while Redis is still
    /// coming up, and decides by its fail mode until it answers); a Cluster needs one seed
    /// node to answer now, to learn the slot map.
    pub async fn connect(
        target: &RedisTarget,
        security: &RedisSecurity,
        io_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let fail = |what: &str, e: redis::RedisError| {
            StoreError::permanent(format!("{what} {target:?}: {e}"))
        };
        match target {
            RedisTarget::Single(url) => {
                let mut info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| fail("invalid Redis URL", e))?;
                let mut settings = info.redis_settings().clone();
                if let Some(user) = &security.username {
                    settings = settings.set_username(user);
                }
                if let Some(password) = &security.password {
                    settings = settings.set_password(password.as_str());
                }
                info = info.set_redis_settings(settings);
                let client = match security.certificates() {
                    Some(certs) => redis::Client::build_with_tls(info, certs),
                    None => redis::Client::open(info),
                }
                .map_err(|e| fail("invalid Redis TLS settings for", e))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(io_timeout))
                    .set_response_timeout(Some(io_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| fail("cannot set up a connection to", e))?;
                Ok(Self::Single(manager))
            }
            RedisTarget::Cluster(urls) => {
                let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(io_timeout)
                    .response_timeout(io_timeout)
                    .retries(3);
                if let Some(user) = &security.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &security.password {
                    builder = builder.password(password.as_str());
                }
                if let Some(certs) = security.certificates() {
                    builder = builder.certs(certs);
                }
                let client = builder
                    .build()
                    .map_err(|e| fail("invalid Redis Cluster seeds", e))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| fail("cannot connect to Redis Cluster", e))?;
                Ok(Self::Cluster(conn))
            }
        }
    }

    /// True for a Cluster, where a batch spanning slots is decided per slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis error as a store error: transient when retrying later may succeed.
pub(super) fn store_error(e: redis::RedisError) -> StoreError {
    let transient =
        e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal();
    StoreError {
        message: e.to_string(),
        transient,
        kind: failure_kind(&e),
    }
}

/// The sort of a Redis failure, for the log: the server's error code when it is one an
/// operator acts on, else what went wrong on the way.
fn failure_kind(e: &redis::RedisError) -> &'static str {
    const CODES: [&str; 8] = [
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "OOM",
        "READONLY",
        "MASTERDOWN",
        "BUSY",
        "NOSCRIPT",
    ];
    if let Some(code) = e
        .code()
        .and_then(|code| CODES.into_iter().find(|c| *c == code))
    {
        return code;
    }
    if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed) {
        "authentication refused"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() {
        "connection refused"
    } else if e.is_io_error() || e.is_connection_dropped() {
        "connection lost"
    } else if e.to_string().contains("script") {
        "script error"
    } else {
        "redis error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_named_by_kind() {
        let refused = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "no"));
        assert_eq!(store_error(refused).kind, "authentication refused");
        let closed = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let closed = store_error(redis::RedisError::from(closed));
        assert_eq!(
            (closed.kind, closed.transient),
            ("connection refused", true)
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            store_error(redis::RedisError::from(reset)).kind,
            "connection lost"
        );
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("redis://:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://user:pw@h:1"), "rediss://***@h:1");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let t = RedisTarget::Cluster(vec!["redis://:pw@a:1".into()]);
        assert!(!format!("{t:?}").contains("pw"));
    }
}
