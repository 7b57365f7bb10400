//! The `[transport]` settings: bounds on the gRPC port's connections and HTTP/2 streams, so no
//! caller can hold memory, file descriptors or the accept loop with traffic that proves nothing.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration_setting, invalid};

/// Bounds on connections and HTTP/2 streams of the gRPC port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Connections open at once (TLS handshakes included); past it a new connection is closed
    /// as soon as it is accepted, which keeps the accept loop and the backlog moving.
    pub max_connections: usize,
    /// HTTP/2 streams open at once on one connection; hyper refuses more (`REFUSED_STREAM`).
    /// Unset, tonic would give h2 no limit at all.
    pub max_concurrent_streams: u32,
    /// Largest header list (metadata) of one request, in bytes.
    pub max_header_list_size: u32,
    /// Longest wait for a new connection's HTTP/2 preface (after the TLS handshake, if any).
    pub silent_timeout: Duration,
    /// A connection with no stream open for this long is closed.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 PING checks a quiet peer is still there.
    pub keepalive_interval: Duration,
    /// A peer that does not answer a PING within this is closed.
    pub keepalive_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_streams: 200,
            max_header_list_size: 16 * 1024,
            silent_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// The `[transport]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TransportSection {
    max_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
    max_header_list_size: Option<u32>,
    silent_timeout: Option<String>,
    idle_timeout: Option<String>,
    keepalive_interval: Option<String>,
    keepalive_timeout: Option<String>,
}

impl TransportLimits {
    /// Validates the file's `[transport]` table over the defaults.
    pub(super) fn resolve(file: TransportSection) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let count = |value: Option<u64>, key: &str, default: u64, max: u64| match value {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(_) => Err(invalid(
                format!("config file: transport.{key}"),
                format!("must be between 1 and {max}"),
            )),
        };
        let duration = |value: Option<String>, key: &str, default: Duration| {
            let origin = format!("config file: transport.{key}");
            let d = duration_setting(value.map(|v| (v, origin.clone())), default)?;
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return Err(invalid(origin, "must be between 1ms and 24h"));
            }
            Ok(d)
        };
        let max_connections = count(
            file.max_connections.map(|v| v as u64),
            "max_connections",
            defaults.max_connections as u64,
            1_000_000,
        )? as usize;
        let max_concurrent_streams = count(
            file.max_concurrent_streams.map(u64::from),
            "max_concurrent_streams",
            u64::from(defaults.max_concurrent_streams),
            10_000,
        )? as u32;
        let max_header_list_size = count(
            file.max_header_list_size.map(u64::from),
            "max_header_list_size",
            u64::from(defaults.max_header_list_size),
            1 << 20,
        )? as u32;
        Ok(Self {
            max_connections,
            max_concurrent_streams,
            max_header_list_size,
            silent_timeout: duration(
                file.silent_timeout,
                "silent_timeout",
                defaults.silent_timeout,
            )?,
            idle_timeout: duration(file.idle_timeout, "idle_timeout", defaults.idle_timeout)?,
            keepalive_interval: duration(
                file.keepalive_interval,
                "keepalive_interval",
                defaults.keepalive_interval,
            )?,
            keepalive_timeout: duration(
                file.keepalive_timeout,
                "keepalive_timeout",
                defaults.keepalive_timeout,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml_text: &str) -> Result<TransportLimits, ConfigError> {
        TransportLimits::resolve(toml::from_str(toml_text).unwrap())
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(resolve("").unwrap(), TransportLimits::default());
        let t = resolve("max_connections = 5\nidle_timeout = \"2s\"\n").unwrap();
        assert_eq!(t.max_connections, 5);
        assert_eq!(t.idle_timeout, Duration::from_secs(2));
    }

    #[test]
    fn zero_or_huge_bounds_are_refused_naming_the_key() {
        for (text, key) in [
            ("max_connections = 0", "transport.max_connections"),
            (
                "max_concurrent_streams = 0",
                "transport.max_concurrent_streams",
            ),
            (
                "max_header_list_size = 4194304",
                "transport.max_header_list_size",
            ),
            ("silent_timeout = \"0s\"", "transport.silent_timeout"),
            ("keepalive_timeout = \"2d\"", "transport.keepalive_timeout"),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
