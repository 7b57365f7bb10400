//! The limits: the default, `[[limits.override]]`, Envoy descriptors, and the policy refresh.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::settings::{DEFAULT_LIMIT, ENVOY_CONFIG};
use super::{ConfigError, EnvSource, duration_setting, invalid, pick};
use crate::keys;
use crate::ratelimit::envoy_config::EnvoyConfig;
use crate::ratelimit::policy::{Limit, PolicyOverride, parse_period};
use crate::ratelimit::{FailMode, LimiterSettings};

/// How often replicas re-read runtime overrides unless `policy_refresh` says.
const DEFAULT_POLICY_REFRESH: Duration = Duration::from_millis(500);
/// The longest `policy_refresh`: admin changes must reach every replica within a second.
const MAX_POLICY_REFRESH: Duration = Duration::from_secs(1);

/// The limit flags, flattened into the command line.
#[derive(Debug, Default, clap::Args)]
pub(super) struct LimitsFlags {
    /// envoyproxy/ratelimit YAML file or folder
    #[arg(long, value_name = "PATH")]
    envoy_config: Option<PathBuf>,
    /// Default limit for every tenant, e.g. 60/1m
    #[arg(long, value_name = "RATE/PERIOD")]
    default_limit: Option<String>,
}

/// The `[limits]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsSection {
    default: Option<LimitSpec>,
    #[serde(default, rename = "override")]
    overrides: Vec<OverrideSpec>,
    /// `config file <path>`, set by the loader, so an invalid limit names the file it is in.
    #[serde(skip)]
    pub(super) origin: Option<String>,
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

/// The `[envoy]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvoySection {
    config: Option<PathBuf>,
    fail_mode: Option<FailMode>,
    response_headers: Option<bool>,
}

/// The limits, validated, with the limiter's Envoy settings.
pub(super) struct ResolvedLimits {
    pub default_limit: Limit,
    pub overrides: Vec<PolicyOverride>,
    pub envoy: EnvoyConfig,
    pub envoy_fail_mode: FailMode,
    pub envoy_response_headers: bool,
    pub policy_refresh: Duration,
}

impl ResolvedLimits {
    /// Resolves flags, environment and file (in that order of precedence); `policy_refresh` is
    /// the file's top-level key of that name.
    pub(super) fn resolve(
        flags: LimitsFlags,
        file: LimitsSection,
        envoy_file: EnvoySection,
        policy_refresh: Option<String>,
        env: &dyn EnvSource,
    ) -> Result<Self, ConfigError> {
        // A file's limits are named by their TOML path, after the file's own name.
        let in_file = |at: String| match &file.origin {
            Some(origin) => format!("{origin}: {at}"),
            None => at,
        };
        let file_default = file.default.map(|d| (d.rate, d.period, d.burst));
        // The file's default is a table, so it comes between the variable and the default.
        let spec = |(spec, origin): (String, String)| {
            Limit::parse_spec(&spec).map_err(|e| invalid(origin, e))
        };
        let default_limit = match (
            pick(&DEFAULT_LIMIT, flags.default_limit, env, None),
            file_default,
        ) {
            (Some(given), _) => spec(given)?,
            (None, Some((rate, period, burst))) => {
                file_limit(&in_file("limits.default".into()), rate, &period, burst)?
            }
            (None, None) => spec(DEFAULT_LIMIT.default_value())?,
        };

        let mut overrides = Vec::with_capacity(file.overrides.len());
        for (i, o) in file.overrides.into_iter().enumerate() {
            let at = in_file(format!("limits.override[{i}]"));
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
            .or_else(|| env.non_empty(ENVOY_CONFIG.env).map(PathBuf::from))
            .or(envoy_file.config);
        let envoy = match envoy_path {
            Some(path) => EnvoyConfig::load(&path).map_err(|e| invalid("envoy config", e))?,
            None => EnvoyConfig::default(),
        };

        let policy_refresh = duration_setting(
            policy_refresh.map(|v| (v, "policy_refresh".into())),
            DEFAULT_POLICY_REFRESH,
        )?;
        if policy_refresh > MAX_POLICY_REFRESH {
            return Err(invalid(
                "policy_refresh",
                "must be at most 1s so replicas apply admin changes within a second",
            ));
        }

        let defaults = LimiterSettings::default();
        Ok(Self {
            default_limit,
            overrides,
            envoy,
            envoy_fail_mode: envoy_file.fail_mode.unwrap_or(defaults.envoy_fail_mode),
            envoy_response_headers: envoy_file
                .response_headers
                .unwrap_or(defaults.envoy_response_headers),
            policy_refresh,
        })
    }
}

/// A limit from the file's `rate`, `period` and `burst` keys at `at`.
fn file_limit(at: &str, rate: u64, period: &str, burst: u64) -> Result<Limit, ConfigError> {
    let period = parse_period(period).map_err(|e| invalid(format!("{at}.period"), e.reason))?;
    Limit::new(rate, period, burst).map_err(|e| invalid(format!("{at}.{}", e.field), e.reason))
}

#[cfg(test)]
mod tests {
    use super::super::testing::load;

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
}
