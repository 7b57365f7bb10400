//! The `[auth]` settings: signing keys, token and session lifetimes, lockout, password policy,
//! Argon2 cost, login throttles and audit retention.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::settings::{ACCESS_TOKEN_TTL, JWT_AUDIENCE, JWT_ISSUER, JWT_KEY_SET};
use super::{ConfigError, EnvSource, duration_setting, duration_value, invalid, pick_or_default};
use crate::auth::audit_counting::CountingLimits;
use crate::auth::model::LockoutSettings;
use crate::auth::password::{Argon2Params, DEFAULT_QUEUE_TIMEOUT, PasswordPolicy, default_permits};
use crate::auth::tokens::{ENV_SECRET, KeyRing};
use crate::auth::{AuthSettings, LoginLimits};
use crate::keys;
use crate::ratelimit::policy::Limit;

/// The longest refresh grace window: it is for a retry whose answer was lost, and a longer one
/// gives a stolen, already-rotated refresh token longer to pass unnoticed.
const MAX_REFRESH_GRACE: Duration = Duration::from_secs(300);

/// The longest revocation poll: the service promises revocations reach every replica in 1 s.
const MAX_REVOCATION_POLL: Duration = Duration::from_secs(1);

/// Where the JWT keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `JWT_SECRET_KEY` (and `JWT_SECRET_KEY_OLD`), read at start.
    Env(Arc<KeyRing>),
    /// A key-set file, followed for changes.
    File(PathBuf),
    /// Nothing configured on the memory store: a random key that dies with the process.
    Ephemeral,
}

/// Authentication settings, validated.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// What the authenticator enforces (token claims and lifetime, sessions, lockout, password
    /// policies, login throttles, audit retention), built here whole so each is written once.
    pub settings: AuthSettings,
    /// Signing and verification keys.
    pub keys: KeySource,
    /// Cost of new hashes (older ones are upgraded at login).
    pub argon2: Argon2Params,
    /// Hashes computed at once; with `argon2.memory_kib` this bounds hashing memory.
    pub hash_permits: usize,
    /// Longest wait for a hashing permit before RESOURCE_EXHAUSTED.
    pub hash_queue_timeout: Duration,
    /// How often each replica reads the revocation feed (at most 1 s).
    pub revocation_poll: Duration,
    /// How often a key-set file is checked for changes.
    pub key_set_poll: Duration,
}

/// The `[auth]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthSection {
    jwt_key_set: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    access_token_ttl: Option<String>,
    session_idle_timeout: Option<String>,
    session_lifetime: Option<String>,
    refresh_grace: Option<String>,
    reveal_lockout: Option<bool>,
    password_policy: Option<PasswordPolicy>,
    #[serde(default)]
    tenant_password_policy: HashMap<String, PasswordPolicy>,
    audit_retention_days: Option<u32>,
    audit_count_window: Option<String>,
    audit_count_per_tenant: Option<u32>,
    audit_count_total: Option<u32>,
    login_limit_per_ip: Option<String>,
    login_limit_per_ip_all_tenants: Option<String>,
    login_limit_per_tenant: Option<String>,
    admin_failure_limit: Option<String>,
    revocation_poll: Option<String>,
    key_set_poll: Option<String>,
    #[serde(default)]
    lockout: LockoutSection,
    #[serde(default)]
    argon2: Argon2Section,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockoutSection {
    max_failures: Option<u32>,
    window: Option<String>,
    /// A duration, or `until-unlock`.
    duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Argon2Section {
    memory_kib: Option<u32>,
    iterations: Option<u32>,
    parallelism: Option<u32>,
    permits: Option<usize>,
    permits_per_client_ip: Option<usize>,
    queue_timeout: Option<String>,
}

/// The auth flags, flattened into the command line.
#[derive(Debug, Default, clap::Args)]
pub(super) struct AuthFlags {
    /// JWT key-set file, reloaded when it changes; without it the HS256 secret comes from
    /// JWT_SECRET_KEY (and JWT_SECRET_KEY_OLD, or their _FILE forms)
    #[arg(long, value_name = "FILE")]
    jwt_key_set: Option<PathBuf>,
    /// `iss` of access tokens
    #[arg(long, value_name = "ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` of access tokens
    #[arg(long, value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
    /// Access-token lifetime
    #[arg(long, value_name = "DURATION")]
    access_token_ttl: Option<String>,
}

fn limit_setting(value: Option<String>, key: &str, default: &str) -> Result<Limit, ConfigError> {
    let spec = value.as_deref().unwrap_or(default);
    Limit::parse_spec(spec).map_err(|e| invalid(format!("config file: auth.{key}"), e))
}

fn file_duration(
    value: Option<String>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    duration_setting(
        value.map(|v| (v, format!("config file: auth.{key}"))),
        default,
    )
}

impl AuthConfig {
    /// Resolves flags, environment and file; `shared_store` is true when replicas share the
    /// store, so they must share keys too.
    pub(super) fn resolve(
        flags: AuthFlags,
        file: AuthSection,
        env: &dyn EnvSource,
        shared_store: bool,
    ) -> Result<Self, ConfigError> {
        let key_set = flags
            .jwt_key_set
            .or_else(|| env.non_empty(JWT_KEY_SET.env).map(PathBuf::from))
            .or(file.jwt_key_set);
        let from_env = KeyRing::from_env(&|name| env.var(name)).map_err(|e| {
            // KeyRingError never carries key material.
            invalid(ENV_SECRET, e)
        })?;
        let keys = match (key_set, from_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "--jwt-key-set / JWT_SECRET_KEY",
                    "set one of them, not both",
                ));
            }
            (Some(path), None) => KeySource::File(path),
            (None, Some(ring)) => KeySource::Env(Arc::new(ring)),
            (None, None) if shared_store => {
                return Err(invalid(
                    "JWT_SECRET_KEY / --jwt-key-set",
                    "a Redis store is shared by replicas, which must share signing keys: set \
                     JWT_SECRET_KEY (or JWT_SECRET_KEY_FILE; generate one with: openssl rand \
                     -hex 32) or --jwt-key-set",
                ));
            }
            (None, None) => KeySource::Ephemeral,
        };

        let (issuer, _) = pick_or_default(&JWT_ISSUER, flags.jwt_issuer, env, file.issuer);
        let (audience, _) = pick_or_default(&JWT_AUDIENCE, flags.jwt_audience, env, file.audience);
        let access_ttl = duration_value(pick_or_default(
            &ACCESS_TOKEN_TTL,
            flags.access_token_ttl,
            env,
            file.access_token_ttl,
        ))?;
        if access_ttl < Duration::from_secs(1) {
            return Err(invalid("access token ttl", "must be at least 1s"));
        }
        let session_idle = file_duration(
            file.session_idle_timeout,
            "session_idle_timeout",
            Duration::from_secs(12 * 3600),
        )?;
        let session_lifetime = file_duration(
            file.session_lifetime,
            "session_lifetime",
            Duration::from_secs(7 * 86_400),
        )?;
        if session_idle.is_zero() || session_lifetime.is_zero() {
            return Err(invalid(
                "config file: auth.session_*",
                "session timeouts must be positive",
            ));
        }
        let refresh_grace = file_duration(file.refresh_grace, "refresh_grace", Duration::ZERO)?;
        if refresh_grace > MAX_REFRESH_GRACE {
            return Err(invalid(
                "config file: auth.refresh_grace",
                "must be at most 5m",
            ));
        }

        let defaults = LockoutSettings::default();
        let max_failures = file.lockout.max_failures.unwrap_or(defaults.max_failures);
        if max_failures == 0 {
            return Err(invalid(
                "config file: auth.lockout.max_failures",
                "must be at least 1",
            ));
        }
        let window = file_duration(file.lockout.window, "lockout.window", defaults.window)?;
        let lock_for = match file.lockout.duration.as_deref() {
            Some("until-unlock") => None,
            other => Some(file_duration(
                other.map(str::to_owned),
                "lockout.duration",
                defaults.lock_for.unwrap_or(defaults.window),
            )?),
        };
        if window.is_zero() || lock_for.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "config file: auth.lockout",
                "window and duration must be positive",
            ));
        }

        for tenant in file.tenant_password_policy.keys() {
            keys::validate_id("tenant", tenant, true)
                .map_err(|e| invalid("config file: auth.tenant_password_policy", e))?;
        }

        let base = Argon2Params::default();
        let argon2 = Argon2Params::new(
            file.argon2.memory_kib.unwrap_or(base.memory_kib),
            file.argon2.iterations.unwrap_or(base.iterations),
            file.argon2.parallelism.unwrap_or(base.parallelism),
        )
        .map_err(|e| invalid("config file: auth.argon2", e))?;
        let hash_permits = file.argon2.permits.unwrap_or_else(default_permits);
        // Half the permits by default (at least one): one source can never take them all.
        let hashing_per_ip = match file.argon2.permits_per_client_ip {
            None => hash_permits.div_ceil(2).max(1),
            Some(0) => {
                return Err(invalid(
                    "config file: auth.argon2.permits_per_client_ip",
                    "must be at least 1",
                ));
            }
            Some(n) => n,
        };
        let hash_queue_timeout = file_duration(
            file.argon2.queue_timeout,
            "argon2.queue_timeout",
            DEFAULT_QUEUE_TIMEOUT,
        )?;

        let counting = CountingLimits::default();
        let audit_counting = CountingLimits {
            window: file_duration(
                file.audit_count_window,
                "audit_count_window",
                counting.window,
            )?,
            per_tenant: file.audit_count_per_tenant.unwrap_or(counting.per_tenant),
            total: file.audit_count_total.unwrap_or(counting.total),
        };
        if audit_counting.window < Duration::from_secs(1) {
            return Err(invalid(
                "config file: auth.audit_count_window",
                "must be at least 1s",
            ));
        }
        // A counted series stores two events (its first and its count).
        for (key, cap) in [
            ("audit_count_per_tenant", audit_counting.per_tenant),
            ("audit_count_total", audit_counting.total),
        ] {
            if cap < 2 {
                return Err(invalid(
                    format!("config file: auth.{key}"),
                    "must be at least 2",
                ));
            }
        }

        let revocation_poll = file_duration(
            file.revocation_poll,
            "revocation_poll",
            Duration::from_millis(250),
        )?;
        if revocation_poll > MAX_REVOCATION_POLL || revocation_poll.is_zero() {
            return Err(invalid(
                "config file: auth.revocation_poll",
                "must be between 1ms and 1s so revocations reach every replica within a second",
            ));
        }

        Ok(Self {
            settings: AuthSettings {
                issuer,
                audience,
                access_ttl,
                session_idle,
                session_lifetime,
                refresh_grace,
                lockout: LockoutSettings {
                    max_failures,
                    window,
                    lock_for,
                },
                reveal_lockout: file.reveal_lockout.unwrap_or(false),
                default_policy: file.password_policy.unwrap_or_default(),
                tenant_policies: file.tenant_password_policy,
                login_limits: LoginLimits {
                    per_ip: limit_setting(file.login_limit_per_ip, "login_limit_per_ip", "20/1m")?,
                    per_ip_all_tenants: limit_setting(
                        file.login_limit_per_ip_all_tenants,
                        "login_limit_per_ip_all_tenants",
                        "60/1m",
                    )?,
                    per_tenant: limit_setting(
                        file.login_limit_per_tenant,
                        "login_limit_per_tenant",
                        "600/1m",
                    )?,
                    hashing_per_ip,
                },
                audit_retention_days: file.audit_retention_days.unwrap_or(365).max(1),
                audit_counting,
                admin_failure_limit: limit_setting(
                    file.admin_failure_limit,
                    "admin_failure_limit",
                    "10/1m",
                )?,
                // The store's shared `username-hash` secret, so every replica hashes alike.
                subject_key: None,
            },
            keys,
            argon2,
            hash_permits,
            hash_queue_timeout,
            revocation_poll,
            key_set_poll: file_duration(file.key_set_poll, "key_set_poll", Duration::from_secs(1))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{SECRET_32, load};
    use super::*;

    #[test]
    fn auth_defaults_follow_the_guide() {
        let c = load(&[], &[]).unwrap();
        let a = &c.auth;
        assert!(matches!(a.keys, KeySource::Ephemeral));
        assert_eq!(
            (a.settings.issuer.as_str(), a.settings.audience.as_str()),
            ("portcullis", "portcullis")
        );
        assert_eq!(a.settings.access_ttl, Duration::from_secs(1800));
        assert_eq!(a.settings.lockout.max_failures, 5);
        assert_eq!(a.settings.lockout.window, Duration::from_secs(900));
        assert_eq!(a.settings.lockout.lock_for, Some(Duration::from_secs(900)));
        assert_eq!(
            (
                a.argon2.memory_kib,
                a.argon2.iterations,
                a.argon2.parallelism
            ),
            (65_536, 3, 4)
        );
        assert_eq!(a.settings.audit_retention_days, 365);
        assert_eq!(a.settings.refresh_grace, Duration::ZERO, "off by default");
        assert!(!a.settings.reveal_lockout);
        let admin = a.settings.admin_failure_limit;
        assert_eq!(
            (admin.rate(), admin.period()),
            (10, Duration::from_secs(60))
        );
    }

    #[test]
    fn refresh_grace_from_the_file_bounded_and_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let p = path.to_str().unwrap();
        let grace = |text: &str| {
            std::fs::write(&path, format!("[auth]\nrefresh_grace = \"{text}\"\n")).unwrap();
            load(&["--config", p], &[]).map(|c| c.auth.settings.refresh_grace)
        };
        assert_eq!(grace("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(grace("5m").unwrap(), MAX_REFRESH_GRACE);
        for bad in ["5m 1s", "soon"] {
            let e = grace(bad).unwrap_err().to_string();
            assert!(e.contains("auth.refresh_grace"), "{bad}: {e}");
        }
    }

    #[test]
    fn admin_failure_limit_from_the_file_or_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let p = path.to_str().unwrap();
        std::fs::write(&path, "[auth]\nadmin_failure_limit = \"3/1h\"\n").unwrap();
        let admin = load(&["--config", p], &[])
            .unwrap()
            .auth
            .settings
            .admin_failure_limit;
        assert_eq!(
            (admin.rate(), admin.period()),
            (3, Duration::from_secs(3600))
        );
        std::fs::write(&path, "[auth]\nadmin_failure_limit = \"lots\"\n").unwrap();
        let e = load(&["--config", p], &[]).unwrap_err().to_string();
        assert!(e.contains("auth.admin_failure_limit"), "{e}");
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
            (a.settings.issuer.as_str(), a.settings.audience.as_str()),
            ("file-iss", "svc")
        );
        assert_eq!(a.settings.access_ttl, Duration::from_secs(300));
        assert_eq!(
            (a.settings.lockout.max_failures, a.settings.lockout.lock_for),
            (3, None)
        );
        assert!(a.settings.reveal_lockout);
        assert_eq!(a.settings.default_policy, PasswordPolicy::Nist);
        assert_eq!(
            a.settings.tenant_policies.get("acme"),
            Some(&PasswordPolicy::Guide)
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
}
