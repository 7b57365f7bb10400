//! Configuration: defaults, then the TOML file, then `PORTCULLIS_*` environment variables,
//! then flags; validated into one [`Config`]. The environment is read through [`EnvSource`] so
//! tests pass a map instead of mutating the process environment.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod auth;
mod redis;
mod secrets;
mod settings;
mod tls;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::ratelimit::envoy_config::EnvoyConfig;
use crate::ratelimit::policy::{Limit, PolicyOverride, parse_period};
use crate::ratelimit::{FailMode, LimiterSettings, keys};
use crate::store::redis::{RedisSecurity, RedisTarget};
use crate::telemetry::logs::LogFormat;
use settings::{Plain, Setting};

pub use crate::env::{EnvSource, ProcessEnv};
pub use auth::{AuthConfig, KeySource};
pub use secrets::{DotEnv, WithDotEnv};
pub use tls::{ServerTls, TlsConfig, TlsFile};

/// The admin bearer token: zeroized on drop, never shown by `Debug`.
#[derive(Clone)]
pub struct AdminToken(Zeroizing<String>);

impl AdminToken {
    /// The token itself, for the constant-time check only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Which store holds the counters.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In-process (one replica only).
    Memory,
    /// Redis or Redis Cluster.
    Redis(RedisTarget),
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Counter store.
    pub store: StoreConfig,
    /// Redis connect and response timeout (the limiter's own timeout is shorter).
    pub redis_io_timeout: Duration,
    /// Redis ACL user, password and TLS material.
    pub redis_security: RedisSecurity,
    /// The default limit for every tenant.
    pub default_limit: Limit,
    /// Per-tenant and per-(tenant, resource) limits from the config file.
    pub overrides: Vec<PolicyOverride>,
    /// Envoy descriptor configuration.
    pub envoy: EnvoyConfig,
    /// Limiter timeouts, fail modes and cache size.
    pub limiter: LimiterSettings,
    /// How often each replica polls runtime overrides.
    pub policy_refresh: Duration,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// The admin token; `None` disables the admin API.
    pub admin_token: Option<AdminToken>,
    /// Authentication: keys, lifetimes, lockout, passwords.
    pub auth: AuthConfig,
    /// The admin HTTP port (`/metrics`, `/livez`, `/readyz`); `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// How operational log lines are written (audit lines are JSON either way).
    pub log_format: LogFormat,
    /// TLS (and mTLS) on the gRPC port.
    pub tls: TlsConfig,
}

/// A configuration problem, naming the setting and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Help or version was asked for; print it and exit 0.
    #[error("{0}")]
    Help(String),
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// A setting is invalid.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The flag, variable or file key.
        setting: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(setting: impl Into<String>, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        reason: reason.to_string(),
    }
}

/// Exact per-tenant rate limiting (GCRA) and authentication over gRPC.
///
/// Every flag can also be set by the environment variable named in its help, and in the TOML
/// file given by --config; flags win over variables, variables over the file.
// (Not in the help text above:) each flag's variable and default are appended to its help from
// the table in `settings.rs`, which resolving reads too, so the two cannot disagree.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version)]
struct Flags {
    /// gRPC listen address
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// TOML config file
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Single Redis node, redis:// or rediss://; without it or --redis-cluster, the embedded
    /// memory store is used
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster
    #[arg(long, value_name = "URL,URL,...")]
    redis_cluster: Option<String>,
    /// PEM bundle of the CAs that sign Redis's certificates (rediss:// only); the password comes
    /// from PORTCULLIS_REDIS_PASSWORD or PORTCULLIS_REDIS_PASSWORD_FILE, the ACL user from
    /// PORTCULLIS_REDIS_USERNAME
    #[arg(long, value_name = "FILE")]
    redis_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to Redis
    #[arg(long, value_name = "FILE")]
    redis_client_cert: Option<PathBuf>,
    /// PEM key of the Redis client certificate
    #[arg(long, value_name = "FILE")]
    redis_client_key: Option<PathBuf>,
    /// envoyproxy/ratelimit YAML file or folder
    #[arg(long, value_name = "PATH")]
    envoy_config: Option<PathBuf>,
    /// Default limit for every tenant, e.g. 60/1m
    #[arg(long, value_name = "RATE/PERIOD")]
    default_limit: Option<String>,
    /// What Check answers when the store does not answer in time
    #[arg(long, value_name = "open|closed")]
    fail_mode: Option<String>,
    /// Longest wait for the store before the fail mode decides, e.g. 100ms
    #[arg(long, value_name = "DURATION")]
    store_timeout: Option<String>,
    /// JWT key-set file, reloaded when it changes; without it the HS256 secret comes from
    /// JWT_SECRET_KEY (and JWT_SECRET_KEY_OLD, or their _FILE forms)
    #[arg(long, value_name = "FILE")]
    jwt_key_set: Option<PathBuf>,
    /// Admin HTTP address for /metrics, /livez and /readyz, or "off"
    #[arg(long, value_name = "ADDR|off")]
    metrics_listen: Option<String>,
    /// Log lines as JSON objects or as text; audit events are JSON either way
    #[arg(long, value_name = "json|text")]
    log_format: Option<String>,
    /// `iss` of access tokens
    #[arg(long, value_name = "ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` of access tokens
    #[arg(long, value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
    /// Access-token lifetime
    #[arg(long, value_name = "DURATION")]
    access_token_ttl: Option<String>,
    #[command(flatten)]
    tls: tls::TlsFlags,
}

/// The TOML file. Unknown keys are an error so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    envoy: EnvoySection,
    policy_refresh: Option<String>,
    shutdown_grace: Option<String>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    auth: auth::AuthSection,
    #[serde(default)]
    tls: tls::TlsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    default: Option<LimitSpec>,
    #[serde(default, rename = "override")]
    overrides: Vec<OverrideSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    rate: u64,
    period: String,
    #[serde(default)]
    burst: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideSpec {
    tenant: String,
    resource: Option<String>,
    rate: u64,
    period: String,
    #[serde(default)]
    burst: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvoySection {
    config: Option<PathBuf>,
    fail_mode: Option<FailMode>,
    response_headers: Option<bool>,
}

/// One setting from flag, env or file (in that order of precedence), with where it came from.
fn pick<D>(
    setting: &Setting<D>,
    flag: Option<String>,
    env: &dyn EnvSource,
    file: Option<String>,
) -> Option<(String, String)> {
    flag.map(|v| (v, setting.name()))
        .or_else(|| {
            env.non_empty(setting.env)
                .map(|v| (v, setting.env.to_owned()))
        })
        .or_else(|| file.map(|v| (v, setting.file_origin())))
}

/// [`pick`], or else the setting's default, which the caller parses like a given value.
fn pick_or_default(
    setting: &Setting<Plain>,
    flag: Option<String>,
    env: &dyn EnvSource,
    file: Option<String>,
) -> (String, String) {
    pick(setting, flag, env, file).unwrap_or_else(|| setting.default_value())
}

/// A duration such as `100ms` or `30m`; errors name `origin`.
fn duration_value((text, origin): (String, String)) -> Result<Duration, ConfigError> {
    parse_period(&text).map_err(|e| invalid(origin, e.reason))
}

fn duration_setting(
    value: Option<(String, String)>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), duration_value)
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

impl Config {
    /// Loads from the command line (including the program name) and the environment.
    pub fn load(
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
        env: &dyn EnvSource,
    ) -> Result<Self, ConfigError> {
        let flags = settings::document(Flags::command())
            .try_get_matches_from(args)
            .and_then(|matches| Flags::from_arg_matches(&matches))
            .map_err(|e| match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ConfigError::Help(e.to_string())
                }
                _ => ConfigError::Usage(e.to_string()),
            })?;
        let config_path = flags
            .config
            .clone()
            .or_else(|| env.non_empty(settings::CONFIG.env).map(PathBuf::from));
        let file = match &config_path {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(flags, file, env)
    }

    fn resolve(flags: Flags, file: FileConfig, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let (text, origin) = pick_or_default(&settings::LISTEN, flags.listen, env, file.listen);
        let listen: SocketAddr = text.parse().map_err(|e| {
            invalid(
                origin,
                format!("{text:?} is not an address such as 127.0.0.1:50051: {e}"),
            )
        })?;

        let metrics_listen = match pick_or_default(
            &settings::METRICS_LISTEN,
            flags.metrics_listen,
            env,
            file.metrics_listen,
        ) {
            (text, _) if text == "off" => None,
            (text, origin) => Some(text.parse().map_err(|e| {
                invalid(
                    origin,
                    format!("{text:?} is not an address such as 127.0.0.1:9090, nor off: {e}"),
                )
            })?),
        };

        let log_format = match pick(
            &settings::LOG_FORMAT,
            flags.log_format,
            env,
            file.log_format,
        ) {
            None => LogFormat::for_stderr(),
            Some((text, origin)) => LogFormat::parse(&text)
                .ok_or_else(|| invalid(origin, format!("expected json or text, got {text:?}")))?,
        };

        let redis_url = pick(
            &settings::REDIS_URL,
            flags.redis_url,
            env,
            file.store.redis_url,
        );
        let cluster_from_file = file.store.redis_cluster.map(|v| v.join(","));
        let redis_cluster = pick(
            &settings::REDIS_CLUSTER,
            flags.redis_cluster,
            env,
            cluster_from_file,
        );
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

        let redis_security = redis::resolve(
            redis::RedisFlags {
                ca_file: flags.redis_ca_file,
                client_cert: flags.redis_client_cert,
                client_key: flags.redis_client_key,
            },
            redis::RedisFileKeys {
                username: file.store.redis_username,
                ca_file: file.store.redis_ca_file,
                client_cert: file.store.redis_client_cert,
                client_key: file.store.redis_client_key,
            },
            env,
            &store,
        )?;

        let file_default = file.limits.default.map(|d| (d.rate, d.period, d.burst));
        // The file's default is a table, so it comes between the variable and the default.
        let spec = |(spec, origin): (String, String)| {
            Limit::parse_spec(&spec).map_err(|e| invalid(origin, e))
        };
        let default_limit = match (
            pick(&settings::DEFAULT_LIMIT, flags.default_limit, env, None),
            file_default,
        ) {
            (Some(given), _) => spec(given)?,
            (None, Some((rate, period, burst))) => {
                file_limit("limits.default", rate, &period, burst)?
            }
            (None, None) => spec(settings::DEFAULT_LIMIT.default_value())?,
        };

        let mut overrides = Vec::with_capacity(file.limits.overrides.len());
        for (i, o) in file.limits.overrides.into_iter().enumerate() {
            let at = format!("limits.override[{i}]");
            keys::validate_id("tenant", &o.tenant, true).map_err(|e| invalid(&at, e))?;
            if let Some(r) = &o.resource {
                keys::validate_id("resource", r, true).map_err(|e| invalid(&at, e))?;
            }
            let target = (o.tenant.clone(), o.resource.clone());
            if overrides
                .iter()
                .any(|p: &PolicyOverride| (p.tenant.clone(), p.resource.clone()) == target)
            {
                return Err(invalid(at, "the same tenant and resource appear twice"));
            }
            overrides.push(PolicyOverride {
                limit: file_limit(&at, o.rate, &o.period, o.burst)?,
                tenant: o.tenant,
                resource: o.resource,
            });
        }

        let envoy_path = flags
            .envoy_config
            .or_else(|| env.non_empty(settings::ENVOY_CONFIG.env).map(PathBuf::from))
            .or(file.envoy.config);
        let envoy = match envoy_path {
            Some(path) => EnvoyConfig::load(&path).map_err(|e| invalid("envoy config", e))?,
            None => EnvoyConfig::default(),
        };

        let defaults = LimiterSettings::default();
        // The file's fail mode also takes `unavailable`, so it is read by serde, after the
        // flag and variable.
        let check_fail_mode = match pick(&settings::FAIL_MODE, flags.fail_mode, env, None) {
            Some(given) => fail_mode_value(given)?,
            None => match file.store.fail_mode {
                Some(mode) => mode,
                None => fail_mode_value(settings::FAIL_MODE.default_value())?,
            },
        };
        let store_timeout = duration_value(pick_or_default(
            &settings::STORE_TIMEOUT,
            flags.store_timeout,
            env,
            file.store.timeout,
        ))?;
        let limiter = LimiterSettings {
            store_timeout,
            check_fail_mode,
            envoy_fail_mode: file.envoy.fail_mode.unwrap_or(defaults.envoy_fail_mode),
            envoy_response_headers: file
                .envoy
                .response_headers
                .unwrap_or(defaults.envoy_response_headers),
            deny_cache_entries: file
                .store
                .deny_cache_entries
                .unwrap_or(defaults.deny_cache_entries),
        };
        let redis_io_timeout = duration_setting(
            file.store
                .io_timeout
                .map(|v| (v, "store.io_timeout".into())),
            Duration::from_secs(1),
        )?;
        let policy_refresh = duration_setting(
            file.policy_refresh.map(|v| (v, "policy_refresh".into())),
            Duration::from_millis(500),
        )?;
        if policy_refresh > Duration::from_secs(1) {
            return Err(invalid(
                "policy_refresh",
                "must be at most 1s so replicas apply admin changes within a second",
            ));
        }
        let shutdown_grace = duration_setting(
            file.shutdown_grace.map(|v| (v, "shutdown_grace".into())),
            Duration::from_secs(20),
        )?;

        let tls = TlsConfig::resolve(flags.tls, file.tls, env)?;

        let auth = AuthConfig::resolve(
            auth::AuthFlags {
                jwt_key_set: flags.jwt_key_set,
                jwt_issuer: flags.jwt_issuer,
                jwt_audience: flags.jwt_audience,
                access_token_ttl: flags.access_token_ttl,
            },
            file.auth,
            env,
            matches!(store, StoreConfig::Redis(_)),
        )?;

        Ok(Self {
            auth,
            tls,
            metrics_listen,
            log_format,
            listen,
            store,
            redis_io_timeout,
            redis_security,
            default_limit,
            overrides,
            envoy,
            limiter,
            policy_refresh,
            shutdown_grace,
            admin_token: admin_token(env)?,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = format!("config file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| invalid(&origin, e))?;
    toml::from_str(&text).map_err(|e| invalid(origin, e.message()))
}

fn file_limit(at: &str, rate: u64, period: &str, burst: u64) -> Result<Limit, ConfigError> {
    let period = parse_period(period).map_err(|e| invalid(format!("{at}.period"), e.reason))?;
    Limit::new(rate, period, burst).map_err(|e| invalid(format!("{at}.{}", e.field), e.reason))
}

fn check_redis_url(url: &str, origin: &str) -> Result<String, ConfigError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(url.to_owned())
    } else {
        // Never echo the URL: it may hold a password.
        Err(invalid(origin, "must start with redis:// or rediss://"))
    }
}

/// The admin token from `PORTCULLIS_ADMIN_TOKEN` or the file named by
/// `PORTCULLIS_ADMIN_TOKEN_FILE` (a Kubernetes secret mount); one of them, not both.
fn admin_token(env: &dyn EnvSource) -> Result<Option<AdminToken>, ConfigError> {
    let Some(token) = secrets::secret(env, "PORTCULLIS_ADMIN_TOKEN")? else {
        return Ok(None);
    };
    let token = Zeroizing::new(token.trim().to_owned());
    if token.len() < 16 {
        return Err(invalid(
            "admin token",
            "must be at least 16 characters (generate one with: openssl rand -hex 32)",
        ));
    }
    Ok(Some(AdminToken(token)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A JWT secret long enough to be accepted.
    const SECRET_32: &str = "0123456789abcdef0123456789abcdef";

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let argv = std::iter::once("portcullis").chain(args.iter().copied());
        Config::load(argv, &env(vars))
    }

    #[test]
    fn log_format_from_flag_env_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "log_format = \"text\"\n").unwrap();
        let p = path.to_str().unwrap();
        let from_file = load(&["--config", p], &[]);
        assert_eq!(from_file.unwrap().log_format, LogFormat::Text);
        let from_env = load(&["--config", p], &[("PORTCULLIS_LOG_FORMAT", "json")]);
        assert_eq!(from_env.unwrap().log_format, LogFormat::Json);
        let from_flag = load(
            &["--log-format", "text"],
            &[("PORTCULLIS_LOG_FORMAT", "json")],
        );
        assert_eq!(from_flag.unwrap().log_format, LogFormat::Text);
        let e = load(&[], &[("PORTCULLIS_LOG_FORMAT", "pretty")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("PORTCULLIS_LOG_FORMAT"), "{e}");
    }

    #[test]
    fn defaults_serve_memory_on_loopback_with_60_per_minute() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
        assert!(matches!(c.store, StoreConfig::Memory));
        assert_eq!(
            (
                c.default_limit.rate(),
                c.default_limit.period(),
                c.default_limit.burst()
            ),
            (60, Duration::from_secs(60), 60)
        );
        assert_eq!(c.limiter.check_fail_mode, FailMode::Closed);
        assert_eq!(c.limiter.envoy_fail_mode, FailMode::Unavailable);
        assert_eq!(c.limiter.store_timeout, Duration::from_millis(100));
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn flags_beat_env_and_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[limits]\ndefault = { rate = 5, period = \"1s\" }\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = load(&["--config", p], &[("PORTCULLIS_LISTEN", "127.0.0.1:2")]).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.default_limit.rate(), 5);
        let c = load(
            &["--listen", "127.0.0.1:3", "--default-limit", "7/1h"],
            &[
                ("PORTCULLIS_CONFIG", p),
                ("PORTCULLIS_LISTEN", "127.0.0.1:2"),
                ("PORTCULLIS_DEFAULT_LIMIT", "9/1m"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(
            (c.default_limit.rate(), c.default_limit.period()),
            (7, Duration::from_secs(3600))
        );
        let c = load(
            &[],
            &[
                ("PORTCULLIS_DEFAULT_LIMIT", "9/1m"),
                ("PORTCULLIS_FAIL_MODE", "open"),
            ],
        )
        .unwrap();
        assert_eq!(c.default_limit.rate(), 9);
        assert_eq!(c.limiter.check_fail_mode, FailMode::Open);
    }

    #[test]
    fn file_overrides_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[[limits.override]]\ntenant = \"acme\"\nrate = 10\nperiod = \"1s\"\nburst = 20\n[[limits.override]]\ntenant = \"acme\"\nresource = \"search\"\nrate = 1\nperiod = \"1m\"\n",
        )
        .unwrap();
        let c = load(&["--config", path.to_str().unwrap()], &[]).unwrap();
        assert_eq!(c.overrides.len(), 2);
        assert_eq!(c.overrides[0].limit.burst(), 20);
        assert_eq!(c.overrides[1].resource.as_deref(), Some("search"));

        std::fs::write(&path, "[store]\nredis_ulr = \"redis://x\"\n").unwrap();
        let e = load(&["--config", path.to_str().unwrap()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis_ulr"), "{e}");
    }

    #[test]
    fn invalid_settings_name_their_origin_without_echoing_secrets() {
        let e = load(&["--default-limit", "0/1m"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--default-limit"), "{e}");
        let e = load(&[], &[("PORTCULLIS_FAIL_MODE", "sideways")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("PORTCULLIS_FAIL_MODE"), "{e}");
        let e = load(&["--redis-url", "http://:hunter2hunter2@h"], &[])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            load(
                &["--redis-url", "redis://a", "--redis-cluster", "redis://b"],
                &[]
            )
            .is_err()
        );
        assert!(matches!(load(&["--help"], &[]), Err(ConfigError::Help(_))));
        assert!(matches!(
            load(&["--bogus"], &[]),
            Err(ConfigError::Usage(_))
        ));
    }

    #[test]
    fn shipped_examples_load() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
        let toml = format!("{root}/portcullis.example.toml");
        let envoy = format!("{root}/envoy/ratelimit.yaml");
        let c = load(&["--config", &toml, "--envoy-config", &envoy], &[]).unwrap();
        assert_eq!(c.overrides.len(), 2);
        assert_eq!(c.default_limit.rate(), 60);
        let login = c.envoy.lookup(
            "edge",
            &[("remote_address", "10.0.0.1"), ("path", "/login")],
        );
        assert_eq!(login.and_then(|l| l.name.as_deref()), Some("login_per_ip"));
    }

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

    #[test]
    fn admin_token_from_env_or_file_is_redacted() {
        let secret = "0123456789abcdef0123";
        let c = load(&[], &[("PORTCULLIS_ADMIN_TOKEN", secret)]).unwrap();
        assert_eq!(c.admin_token.as_ref().unwrap().expose(), secret);
        assert!(!format!("{c:?}").contains(secret));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let c = load(
            &[],
            &[("PORTCULLIS_ADMIN_TOKEN_FILE", path.to_str().unwrap())],
        )
        .unwrap();
        assert_eq!(c.admin_token.unwrap().expose(), secret);

        assert!(load(&[], &[("PORTCULLIS_ADMIN_TOKEN", "short")]).is_err());
        assert!(
            load(
                &[],
                &[
                    ("PORTCULLIS_ADMIN_TOKEN", secret),
                    ("PORTCULLIS_ADMIN_TOKEN_FILE", "/x")
                ]
            )
            .is_err()
        );
    }

    #[test]
    fn auth_defaults_follow_the_guide() {
        let c = load(&[], &[]).unwrap();
        let a = &c.auth;
        assert!(matches!(a.keys, KeySource::Ephemeral));
        assert_eq!(
            (a.issuer.as_str(), a.audience.as_str()),
            ("portcullis", "portcullis")
        );
        assert_eq!(a.access_ttl, Duration::from_secs(1800));
        assert_eq!(a.lockout.max_failures, 5);
        assert_eq!(a.lockout.window, Duration::from_secs(900));
        assert_eq!(a.lockout.lock_for, Some(Duration::from_secs(900)));
        assert_eq!(
            (
                a.argon2.memory_kib,
                a.argon2.iterations,
                a.argon2.parallelism
            ),
            (65_536, 3, 4)
        );
        assert_eq!(a.audit_retention_days, 365);
        assert!(!a.reveal_lockout);
    }

    #[test]
    fn auth_settings_from_flags_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[auth]\nissuer = \"file-iss\"\nreveal_lockout = true\npassword_policy = \"nist\"\n\
             [auth.tenant_password_policy]\nacme = \"guide\"\n\
             [auth.lockout]\nmax_failures = 3\nduration = \"until-unlock\"\n\
             [auth.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\npermits = 3\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = load(
            &["--config", p, "--access-token-ttl", "5m"],
            &[
                ("PORTCULLIS_JWT_AUDIENCE", "svc"),
                ("JWT_SECRET_KEY", SECRET_32),
            ],
        )
        .unwrap();
        let a = &c.auth;
        assert!(matches!(a.keys, KeySource::Env(_)));
        assert_eq!(
            (a.issuer.as_str(), a.audience.as_str()),
            ("file-iss", "svc")
        );
        assert_eq!(a.access_ttl, Duration::from_secs(300));
        assert_eq!((a.lockout.max_failures, a.lockout.lock_for), (3, None));
        assert!(a.reveal_lockout);
        assert_eq!(
            a.default_policy,
            crate::auth::password::PasswordPolicy::Nist
        );
        assert_eq!(
            a.tenant_policies.get("acme"),
            Some(&crate::auth::password::PasswordPolicy::Guide)
        );
        assert_eq!((a.argon2.memory_kib, a.hash_permits), (1024, 3));
        let shown = format!("{c:?}");
        assert!(!shown.contains(SECRET_32), "{shown}");
    }

    #[test]
    fn shared_stores_need_a_shared_key() {
        let e = load(&["--redis-url", "redis://h"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("JWT_SECRET_KEY") && e.contains("--jwt-key-set"),
            "{e}"
        );
        let c = load(
            &["--redis-url", "redis://h"],
            &[("JWT_SECRET_KEY", SECRET_32)],
        )
        .unwrap();
        assert!(matches!(c.auth.keys, KeySource::Env(_)));
        let e = load(&[], &[("JWT_SECRET_KEY", "short-secret-value")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("32") && !e.contains("short-secret-value"), "{e}");
        let both = load(
            &["--jwt-key-set", "/x.toml"],
            &[("JWT_SECRET_KEY", SECRET_32)],
        );
        assert!(both.is_err());
        let bad = load(&["--access-token-ttl", "0s"], &[]);
        assert!(bad.is_err());
    }

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
