//! Configuration: defaults, then the TOML file, then `PORTCULLIS_*` environment variables,
//! then flags; validated into one [`Config`]. The environment is read through [`EnvSource`] so
//! tests pass a map instead of mutating the process environment.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod auth;
mod limits;
mod redis;
mod secrets;
mod settings;
mod store;
mod tls;
mod transport;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::ratelimit::LimiterSettings;
use crate::ratelimit::envoy_config::EnvoyConfig;
use crate::ratelimit::policy::{Limit, PolicyOverride, parse_period};
use crate::store::memory::KeyCaps;
use crate::store::redis::RedisSecurity;
use crate::telemetry::logs::LogFormat;
use limits::ResolvedLimits;
use settings::{LISTEN, LOG_FORMAT, METRICS_LISTEN, Plain, Setting};
use store::ResolvedStore;

pub use crate::env::{EnvSource, ProcessEnv};
pub use auth::{AuthConfig, KeySource};
pub use secrets::{DotEnv, WithDotEnv};
pub use store::StoreConfig;
pub use tls::{ServerTls, TlsConfig, TlsFile};
pub use transport::TransportLimits;

/// How long calls in flight may take after SIGTERM unless `shutdown_grace` says.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// A service bearer token (admin, watch): zeroized on drop, never shown by `Debug`.
#[derive(Clone)]
pub struct AdminToken(Zeroizing<String>);

impl AdminToken {
    /// The token itself, for the constant-time check only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A token from a literal, for unit tests of the checks.
    #[cfg(test)]
    pub(crate) fn for_tests(token: &str) -> Self {
        Self(Zeroizing::new(token.to_owned()))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Counter store.
    pub store: StoreConfig,
    /// How many keys the memory store may hold, per tenant and in all.
    pub memory_key_caps: KeyCaps,
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
    /// The token services present to watch security events (the admin token also does), so
    /// the many services that verify tokens locally need not hold the admin token.
    pub watch_token: Option<AdminToken>,
    /// Authentication: keys, lifetimes, lockout, passwords.
    pub auth: AuthConfig,
    /// The admin HTTP port (`/metrics`, `/livez`, `/readyz`); `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// How operational log lines are written (audit lines are JSON either way).
    pub log_format: LogFormat,
    /// TLS (and mTLS) on the gRPC port.
    pub tls: TlsConfig,
    /// Bounds on the gRPC port's connections and streams.
    pub transport: TransportLimits,
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
    #[command(flatten)]
    store: store::StoreFlags,
    #[command(flatten)]
    limits: limits::LimitsFlags,
    /// Admin HTTP address for /metrics, /livez and /readyz, or "off"
    #[arg(long, value_name = "ADDR|off")]
    metrics_listen: Option<String>,
    /// Log lines as JSON objects or as text; audit events are JSON either way
    #[arg(long, value_name = "json|text")]
    log_format: Option<String>,
    #[command(flatten)]
    auth: auth::AuthFlags,
    #[command(flatten)]
    tls: tls::TlsFlags,
}

/// The TOML file. Unknown keys are an error so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    #[serde(default)]
    store: store::StoreSection,
    #[serde(default)]
    limits: limits::LimitsSection,
    #[serde(default)]
    envoy: limits::EnvoySection,
    policy_refresh: Option<String>,
    shutdown_grace: Option<String>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    auth: auth::AuthSection,
    #[serde(default)]
    tls: tls::TlsSection,
    #[serde(default)]
    transport: transport::TransportSection,
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
            Some(path) => {
                let mut file = read_file(path)?;
                file.limits.origin = Some(format!("config file {}", path.display()));
                file
            }
            None => FileConfig::default(),
        };
        Self::resolve(flags, file, env)
    }

    /// Each part in turn; the first invalid setting is the one reported.
    fn resolve(flags: Flags, file: FileConfig, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let listen = listen_address(pick_or_default(&LISTEN, flags.listen, env, file.listen))?;
        let metrics_listen = metrics_address(pick_or_default(
            &METRICS_LISTEN,
            flags.metrics_listen,
            env,
            file.metrics_listen,
        ))?;
        let log_format = log_format(pick(&LOG_FORMAT, flags.log_format, env, file.log_format))?;
        let store = ResolvedStore::resolve(flags.store, file.store, env)?;
        let limits = ResolvedLimits::resolve(
            flags.limits,
            file.limits,
            file.envoy,
            file.policy_refresh,
            env,
        )?;
        let shutdown_grace = duration_setting(
            file.shutdown_grace.map(|v| (v, "shutdown_grace".into())),
            DEFAULT_SHUTDOWN_GRACE,
        )?;
        let tls = TlsConfig::resolve(flags.tls, file.tls, env)?;
        let transport = TransportLimits::resolve(file.transport)?;
        let shared_store = matches!(store.store, StoreConfig::Redis(_));
        let auth = AuthConfig::resolve(flags.auth, file.auth, env, shared_store)?;

        Ok(Self {
            auth,
            tls,
            transport,
            metrics_listen,
            log_format,
            listen,
            store: store.store,
            memory_key_caps: store.memory_key_caps,
            redis_io_timeout: store.io_timeout,
            redis_security: store.security,
            default_limit: limits.default_limit,
            overrides: limits.overrides,
            envoy: limits.envoy,
            // Built whole here: the store part and the Envoy part each resolved their own.
            limiter: LimiterSettings {
                store_timeout: store.timeout,
                check_fail_mode: store.check_fail_mode,
                envoy_fail_mode: limits.envoy_fail_mode,
                envoy_response_headers: limits.envoy_response_headers,
                deny_cache_entries: store.deny_cache_entries,
            },
            policy_refresh: limits.policy_refresh,
            shutdown_grace,
            admin_token: service_token(env, "PORTCULLIS_ADMIN_TOKEN", "admin token")?,
            watch_token: service_token(env, "PORTCULLIS_WATCH_TOKEN", "watch token")?,
        })
    }
}

fn listen_address((text, origin): (String, String)) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|e| {
        invalid(
            origin,
            format!("{text:?} is not an address such as 127.0.0.1:50051: {e}"),
        )
    })
}

/// The admin HTTP address, or `None` for `off`.
fn metrics_address((text, origin): (String, String)) -> Result<Option<SocketAddr>, ConfigError> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| {
        invalid(
            origin,
            format!("{text:?} is not an address such as 127.0.0.1:9090, nor off: {e}"),
        )
    })
}

/// The given log format, else one chosen by whether stderr is a terminal.
fn log_format(value: Option<(String, String)>) -> Result<LogFormat, ConfigError> {
    match value {
        None => Ok(LogFormat::for_stderr()),
        Some((text, origin)) => LogFormat::parse(&text)
            .ok_or_else(|| invalid(origin, format!("expected json or text, got {text:?}"))),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = format!("config file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| invalid(&origin, e))?;
    toml::from_str(&text).map_err(|e| invalid(origin, e.message()))
}

/// A bearer token from the variable `name` or the file named by `<name>_FILE` (a Kubernetes
/// secret mount); one of them, not both.
fn service_token(
    env: &dyn EnvSource,
    name: &str,
    what: &str,
) -> Result<Option<AdminToken>, ConfigError> {
    let Some(token) = secrets::secret(env, name)? else {
        return Ok(None);
    };
    let token = Zeroizing::new(token.trim().to_owned());
    if token.len() < 16 {
        return Err(invalid(
            what,
            "must be at least 16 characters (generate one with: openssl rand -hex 32)",
        ));
    }
    Ok(Some(AdminToken(token)))
}

/// How the tests of every part load a configuration: argv after the program name, and the
/// environment as a map.
#[cfg(test)]
mod testing {
    use std::collections::HashMap;

    use super::{Config, ConfigError};

    /// A JWT secret long enough to be accepted.
    pub(super) const SECRET_32: &str = "0123456789abcdef0123456789abcdef";

    pub(super) fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let argv = std::iter::once("portcullis").chain(args.iter().copied());
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(argv, &env)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::load;
    use super::*;
    use crate::ratelimit::FailMode;

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
        let c = load(&[], &[("PORTCULLIS_WATCH_TOKEN", secret)]).unwrap();
        assert_eq!(c.watch_token.as_ref().unwrap().expose(), secret);
        assert!(c.admin_token.is_none());
        assert!(!format!("{c:?}").contains(secret));
        assert!(load(&[], &[("PORTCULLIS_WATCH_TOKEN", "short")]).is_err());
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
}
