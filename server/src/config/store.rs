//! The `[store]` settings: which store holds the counters, how long to wait for it, its fail mode.

use std::time::Duration;

use serde::Deserialize;

use super::settings::{FAIL_MODE, REDIS_CLUSTER, REDIS_URL, STORE_TIMEOUT};
use super::{
    ConfigError, EnvSource, duration_setting, duration_value, invalid, pick, pick_or_default, redis,
};
use crate::ratelimit::{FailMode, LimiterSettings};
use crate::store::memory::KeyCaps;
use crate::store::redis::{RedisSecurity, RedisTarget};

/// Redis connect and response timeout unless `store.io_timeout` says.
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Which store holds the counters.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In-process (one replica only).
    Memory,
    /// Redis or Redis Cluster.
    Redis(RedisTarget),
}

/// The store flags, flattened into the command line.
#[derive(Debug, Default, clap::Args)]
pub(super) struct StoreFlags {
    /// Single Redis node, redis:// or rediss://; without it or --redis-cluster, the embedded
    /// memory store is used
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster
    #[arg(long, value_name = "URL,URL,...")]
    redis_cluster: Option<String>,
    #[command(flatten)]
    redis: redis::RedisFlags,
    /// What Check answers when the store does not answer in time
    #[arg(long, value_name = "open|closed")]
    fail_mode: Option<String>,
    /// Longest wait for the store before the fail mode decides, e.g. 100ms
    #[arg(long, value_name = "DURATION")]
    store_timeout: Option<String>,
}

/// The `[store]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreSection {
    redis_url: Option<String>,
    redis_cluster: Option<Vec<String>>,
    redis_username: Option<String>,
    redis_ca_file: Option<String>,
    redis_client_cert: Option<String>,
    redis_client_key: Option<String>,
    timeout: Option<String>,
    io_timeout: Option<String>,
    fail_mode: Option<FailMode>,
    deny_cache_entries: Option<usize>,
    memory_max_keys: Option<usize>,
    memory_max_keys_per_tenant: Option<usize>,
}

/// The store's settings, validated: the store itself, and the limiter's settings about it.
pub(super) struct ResolvedStore {
    pub store: StoreConfig,
    pub io_timeout: Duration,
    pub security: RedisSecurity,
    pub timeout: Duration,
    pub check_fail_mode: FailMode,
    pub deny_cache_entries: usize,
    pub memory_key_caps: KeyCaps,
}

impl ResolvedStore {
    /// Resolves flags, environment and file (in that order of precedence).
    pub(super) fn resolve(
        flags: StoreFlags,
        file: StoreSection,
        env: &dyn EnvSource,
    ) -> Result<Self, ConfigError> {
        let redis_url = pick(&REDIS_URL, flags.redis_url, env, file.redis_url);
        let cluster_from_file = file.redis_cluster.map(|v| v.join(","));
        let redis_cluster = pick(&REDIS_CLUSTER, flags.redis_cluster, env, cluster_from_file);
        let store = match (redis_url, redis_cluster) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "--redis-url / --redis-cluster",
                    "set one of them, not both",
                ));
            }
            (Some((url, origin)), None) => {
                StoreConfig::Redis(RedisTarget::Single(check_redis_url(&url, &origin)?))
            }
            (None, Some((urls, origin))) => {
                let seeds = urls
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(|u| check_redis_url(u, &origin))
                    .collect::<Result<Vec<_>, _>>()?;
                if seeds.is_empty() {
                    return Err(invalid(origin, "needs at least one seed URL"));
                }
                StoreConfig::Redis(RedisTarget::Cluster(seeds))
            }
            (None, None) => StoreConfig::Memory,
        };

        let security = redis::resolve(
            flags.redis,
            redis::RedisFileKeys {
                username: file.redis_username,
                ca_file: file.redis_ca_file,
                client_cert: file.redis_client_cert,
                client_key: file.redis_client_key,
            },
            env,
            match &store {
                StoreConfig::Redis(target) => Some(target),
                StoreConfig::Memory => None,
            },
        )?;

        // The file's fail mode also takes `unavailable`, so it is read by serde, after the
        // flag and variable.
        let check_fail_mode = match pick(&FAIL_MODE, flags.fail_mode, env, None) {
            Some(given) => fail_mode_value(given)?,
            None => match file.fail_mode {
                Some(mode) => mode,
                None => fail_mode_value(FAIL_MODE.default_value())?,
            },
        };
        let timeout = duration_value(pick_or_default(
            &STORE_TIMEOUT,
            flags.store_timeout,
            env,
            file.timeout,
        ))?;
        let deny_cache_entries = file
            .deny_cache_entries
            .unwrap_or(LimiterSettings::default().deny_cache_entries);
        let io_timeout = duration_setting(
            file.io_timeout.map(|v| (v, "store.io_timeout".into())),
            DEFAULT_IO_TIMEOUT,
        )?;

        let defaults = KeyCaps::default();
        let memory_key_caps = KeyCaps {
            per_owner: file
                .memory_max_keys_per_tenant
                .unwrap_or(defaults.per_owner),
            total: file.memory_max_keys.unwrap_or(defaults.total),
        };
        for (key, cap) in [
            ("store.memory_max_keys", memory_key_caps.total),
            (
                "store.memory_max_keys_per_tenant",
                memory_key_caps.per_owner,
            ),
        ] {
            if cap == 0 {
                return Err(invalid(format!("config file: {key}"), "must be at least 1"));
            }
        }

        Ok(Self {
            store,
            io_timeout,
            security,
            timeout,
            check_fail_mode,
            deny_cache_entries,
            memory_key_caps,
        })
    }
}

/// `open` or `closed` as a flag or variable gives it (the file also takes `unavailable`).
fn fail_mode_value((text, origin): (String, String)) -> Result<FailMode, ConfigError> {
    match text.as_str() {
        "open" => Ok(FailMode::Open),
        "closed" => Ok(FailMode::Closed),
        other => Err(invalid(
            origin,
            format!("expected open or closed, got {other:?}"),
        )),
    }
}

fn check_redis_url(url: &str, origin: &str) -> Result<String, ConfigError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(url.to_owned())
    } else {
        // Never echo the URL: it may hold a password.
        Err(invalid(origin, "must start with redis:// or rediss://"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{SECRET_32, load};
    use super::*;

    #[test]
    fn redis_cluster_seeds_split_on_commas() {
        let c = load(
            &[],
            &[
                ("PORTCULLIS_REDIS_CLUSTER", "redis://a:1, redis://b:2"),
                ("JWT_SECRET_KEY", SECRET_32),
            ],
        )
        .unwrap();
        let StoreConfig::Redis(RedisTarget::Cluster(seeds)) = c.store else {
            panic!("not a cluster")
        };
        assert_eq!(seeds, ["redis://a:1", "redis://b:2"]);
    }
}
