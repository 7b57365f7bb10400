//! Limit policies: a validated rate/period/burst, and the table that picks the one that applies
//! to a (tenant, resource).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use super::gcra::GcraParams;

/// The longest period a limit may have (a leap year, so yearly limits fit).
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest period.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
/// The largest burst; keeps `emission × burst` far inside the 2^53 µs a Lua number holds exactly.
pub const MAX_BURST: u64 = 1_000_000_000;
/// Upper bound on the tolerance `τ` in µs (about 35 years): Lua numbers stay exact integers.
const MAX_TOLERANCE_US: u64 = 1 << 50;

/// A validated GCRA limit: `rate` units per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    rate: u64,
    period: Duration,
    burst: u64,
}

/// Why a limit was rejected; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidLimit {
    /// `rate`, `period` or `burst`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Limit {
    /// Validates a limit; `burst == 0` means "equal to rate".
    pub fn new(rate: u64, period: Duration, burst: u64) -> Result<Self, InvalidLimit> {
        let invalid = |field, reason: String| Err(InvalidLimit { field, reason });
        if rate == 0 {
            return invalid("rate", "must be at least 1".into());
        }
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return invalid(
                "period",
                format!(
                    "must be between 1ms and 366d, got {}",
                    humantime::format_duration(period)
                ),
            );
        }
        let burst = if burst == 0 { rate } else { burst };
        if burst > MAX_BURST {
            return invalid("burst", format!("must be at most {MAX_BURST}"));
        }
        let period_us = period.as_micros() as u64;
        if rate > period_us {
            return invalid(
                "rate",
                "must be at most one per microsecond of the period".into(),
            );
        }
        let limit = Self {
            rate,
            period,
            burst,
        };
        if limit
            .gcra()
            .emission_interval_us
            .checked_mul(burst)
            .is_none_or(|tau| tau > MAX_TOLERANCE_US)
        {
            return invalid(
                "burst",
                "burst × period / rate must be under 35 years".into(),
            );
        }
        Ok(limit)
    }

    /// Units per period in the long run.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The period the rate is measured over.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Units admitted at once after an idle spell.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The GCRA parameters; the emission interval is rounded up so that rounding can only make
    /// the limit stricter, never admit more than `rate` per `period`.
    pub fn gcra(&self) -> GcraParams {
        let period_us = self.period.as_micros() as u64;
        GcraParams {
            emission_interval_us: period_us.div_ceil(self.rate),
            burst: self.burst,
        }
    }

    /// Parses `RATE/PERIOD`, e.g. `60/1m` or `100/1s` (burst = rate).
    pub fn parse_spec(spec: &str) -> Result<Self, InvalidLimit> {
        let (rate, period) = spec.split_once('/').ok_or_else(|| InvalidLimit {
            field: "limit",
            reason: format!("expected RATE/PERIOD such as 60/1m, got {spec:?}"),
        })?;
        let rate = rate.trim().parse::<u64>().map_err(|e| InvalidLimit {
            field: "rate",
            reason: format!("{rate:?} is not a whole number: {e}"),
        })?;
        let period = parse_period(period.trim())?;
        Self::new(rate, period, 0)
    }
}

/// Parses a period such as `1m`, `30s`, `1h`; a bare unit (`m`, `s`, `h`, `d`) means one of it.
pub fn parse_period(text: &str) -> Result<Duration, InvalidLimit> {
    let text = match text {
        "s" | "ms" | "m" | "h" | "d" => format!("1{text}"),
        _ => text.to_owned(),
    };
    humantime::parse_duration(&text).map_err(|e| InvalidLimit {
        field: "period",
        reason: format!("{text:?} is not a duration such as 1m or 30s: {e}"),
    })
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} burst {}",
            self.rate,
            humantime::format_duration(self.period),
            self.burst
        )
    }
}

/// Where the applied policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The service-wide default.
    Default,
    /// The config file.
    Config,
    /// A runtime override set through the admin API.
    Runtime,
}

/// The limit that applies to a request, and its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedPolicy {
    /// The limit.
    pub limit: Limit,
    /// Where it came from.
    pub source: PolicySource,
}

/// One configured or runtime override: for a tenant, or for one resource of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOverride {
    /// The tenant.
    pub tenant: String,
    /// The resource, or `None` for the tenant-wide limit.
    pub resource: Option<String>,
    /// The limit.
    pub limit: Limit,
}

/// The overrides of one tenant after merging config and runtime (runtime wins).
#[derive(Debug, Default, Clone)]
struct TenantPolicies {
    tenant_wide: Option<AppliedPolicy>,
    by_resource: HashMap<String, AppliedPolicy>,
}

/// Picks the policy for a (tenant, resource): the most specific override wins, and at equal
/// specificity a runtime override beats the config file; else the default applies.
/// Immutable: rebuilt and swapped in whole when runtime overrides change.
#[derive(Debug, Clone)]
pub struct PolicyTable {
    default: Limit,
    tenants: HashMap<String, TenantPolicies>,
}

impl PolicyTable {
    /// Builds the table from the default, the config file's overrides and the runtime ones.
    pub fn new(default: Limit, config: &[PolicyOverride], runtime: &[PolicyOverride]) -> Self {
        let mut tenants: HashMap<String, TenantPolicies> = HashMap::new();
        let layers = [
            (config, PolicySource::Config),
            (runtime, PolicySource::Runtime),
        ];
        for (overrides, source) in layers {
            for o in overrides {
                let policies = tenants.entry(o.tenant.clone()).or_default();
                let applied = AppliedPolicy {
                    limit: o.limit,
                    source,
                };
                match &o.resource {
                    None => policies.tenant_wide = Some(applied),
                    Some(resource) => {
                        policies.by_resource.insert(resource.clone(), applied);
                    }
                }
            }
        }
        Self { default, tenants }
    }

    /// The policy for a request. `resource` is already normalised (empty → "default").
    pub fn resolve(&self, tenant: &str, resource: &str) -> AppliedPolicy {
        self.tenants
            .get(tenant)
            .and_then(|p| p.by_resource.get(resource).or(p.tenant_wide.as_ref()))
            .copied()
            .unwrap_or(AppliedPolicy {
                limit: self.default,
                source: PolicySource::Default,
            })
    }

    /// The service-wide default.
    pub fn default_limit(&self) -> Limit {
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u64) -> Limit {
        Limit::new(rate, Duration::from_secs(60), 0).unwrap()
    }

    fn over(tenant: &str, resource: Option<&str>, rate: u64) -> PolicyOverride {
        PolicyOverride {
            tenant: tenant.into(),
            resource: resource.map(Into::into),
            limit: limit(rate),
        }
    }

    #[test]
    fn specific_beats_general_and_runtime_beats_config() {
        let config = [over("acme", None, 10), over("acme", Some("search"), 20)];
        let runtime = [over("acme", Some("search"), 30), over("globex", None, 40)];
        let table = PolicyTable::new(limit(60), &config, &runtime);
        let check = |t, r, rate, source| {
            let p = table.resolve(t, r);
            assert_eq!((p.limit.rate(), p.source), (rate, source), "{t}/{r}");
        };
        check("acme", "search", 30, PolicySource::Runtime);
        check("acme", "upload", 10, PolicySource::Config);
        check("globex", "default", 40, PolicySource::Runtime);
        check("initech", "default", 60, PolicySource::Default);
    }

    #[test]
    fn burst_zero_means_rate() {
        assert_eq!(limit(60).burst(), 60);
        assert_eq!(Limit::new(5, Duration::from_secs(1), 9).unwrap().burst(), 9);
    }

    #[test]
    fn emission_interval_rounds_up() {
        let l = Limit::new(7, Duration::from_secs(60), 0).unwrap();
        // 60 s / 7 = 8571428.57… µs: rounding up keeps 7 × T ≥ 60 s.
        assert_eq!(l.gcra().emission_interval_us, 8_571_429);
    }

    #[test]
    fn invalid_limits_name_the_field() {
        let e = Limit::new(0, Duration::from_secs(1), 0).unwrap_err();
        assert_eq!(e.field, "rate");
        let e = Limit::new(1, Duration::from_secs(400 * 86_400), 0).unwrap_err();
        assert_eq!(e.field, "period");
        let e = Limit::new(1, Duration::ZERO, 0).unwrap_err();
        assert_eq!(e.field, "period");
        let e = Limit::new(1, Duration::from_secs(1), MAX_BURST + 1).unwrap_err();
        assert_eq!(e.field, "burst");
        let e = Limit::new(1, Duration::from_secs(365 * 86_400), MAX_BURST).unwrap_err();
        assert_eq!(e.field, "burst");
        let e = Limit::new(2_000, Duration::from_millis(1), 0).unwrap_err();
        assert_eq!(e.field, "rate");
    }

    #[test]
    fn parses_specs() {
        let l = Limit::parse_spec("60/1m").unwrap();
        assert_eq!(
            (l.rate(), l.period(), l.burst()),
            (60, Duration::from_secs(60), 60)
        );
        assert_eq!(
            Limit::parse_spec("5/s").unwrap().period(),
            Duration::from_secs(1)
        );
        assert_eq!(
            Limit::parse_spec("5/250ms").unwrap().period(),
            Duration::from_millis(250)
        );
        assert_eq!(Limit::parse_spec("60").unwrap_err().field, "limit");
        assert_eq!(Limit::parse_spec("x/1m").unwrap_err().field, "rate");
        assert_eq!(
            Limit::parse_spec("6/fortnight").unwrap_err().field,
            "period"
        );
    }
}
