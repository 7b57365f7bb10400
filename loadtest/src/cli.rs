//! The command line: flags, their parsers, and the checks that involve several flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgGroup, CommandFactory, Parser, ValueEnum};

use crate::correctness::LimitSpec;
use crate::driver::Mode;
use crate::keyspace::Shape;
use crate::scenario::{DescriptorTemplate, Mix, ScenarioKind};

/// Load and correctness tests for Portcullis (and any Envoy rate limit service).
#[derive(Debug, Parser)]
#[command(
    name = "portcullis-load",
    version,
    group(ArgGroup::new("mode").required(true).args(["concurrency", "rate"])),
    after_help = "\
Closed loop (--concurrency N): N calls in flight at all times; each answer starts the next call.
Open loop (--rate R): R calls per second at fixed times whatever the server does; latency counts
from each call's intended send time, so a stalled server shows in the percentiles.

Correctness (--verify-limit RATE/PERIOD[:BURST]): fresh tenants get that limit (check: set through
AdminService.SetTenantLimit; envoy-rls: must match the server's YAML), and each key's admissions are
compared with the most GCRA may admit: burst + floor(rate × elapsed / period).

Exit status: 0 done, 1 run failed (connection, admin call), 2 bad arguments or input files,
3 over-admitted > 0 in correctness mode, 130 interrupted."
)]
pub struct Cli {
    /// gRPC URL of one server replica, e.g. http://127.0.0.1:50051; repeat for several
    /// replicas (calls go round-robin over them)
    #[arg(long = "target", value_name = "URL", required = true, value_parser = parse_target)]
    pub targets: Vec<String>,

    /// What each call is
    #[arg(long, value_enum, default_value_t = ScenarioArg::Check)]
    pub scenario: ScenarioArg,

    /// Weights of the mixed scenario, e.g. check=8,envoy-rls=2,verify=1
    #[arg(long, value_name = "NAME=WEIGHT,...", value_parser = parse_mix)]
    pub mix: Option<Mix>,

    /// Closed loop: this many calls in flight at all times
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub concurrency: Option<u32>,

    /// Open loop: this many calls per second at fixed intended times
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: Option<f64>,

    /// Open loop: calls in flight at most; calls due beyond it are counted as dropped
    /// [default: 10000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: Option<u64>,

    /// HTTP/2 connections per target; calls are spread over them
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,

    /// Tenants the calls are spread over
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub tenants: u32,

    /// Keys per tenant the calls are spread over
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub keys: u32,

    /// How tenants and keys are drawn (each independently; zipfian makes low ranks hot)
    #[arg(long, value_enum, default_value_t = DistributionArg::Uniform)]
    pub distribution: DistributionArg,

    /// Skew of the zipfian distribution: rank r is drawn ∝ 1/r^s [default: 1.0]
    #[arg(long, value_name = "S", value_parser = parse_exponent, allow_negative_numbers = true)]
    pub zipf_exponent: Option<f64>,

    /// How long to measure, after the warmup
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub duration: Duration,

    /// Load before measuring starts (not in the throughput and latency figures)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Deadline of each call (sent as grpc-timeout too); unanswered calls count as
    /// DEADLINE_EXCEEDED
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Seed of the random choices (scenario, tenant, key), for a reproducible run
    /// [default: random, printed in the summary]
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Also write the summary as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// check: the resource of every call [default: "" (the server's `default`)]
    #[arg(long, value_name = "NAME")]
    pub resource: Option<String>,

    /// envoy-rls: the rate limit domain
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// envoy-rls: one descriptor of each call, KEY=VALUE,... with {tenant} and {key} in values;
    /// repeat for several descriptors [default: tenant={tenant},key={key}]
    #[arg(long = "descriptor", value_name = "TEMPLATE", value_parser = parse_descriptor)]
    pub descriptors: Vec<DescriptorTemplate>,

    /// verify: file of access tokens, one per line (never printed)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// login: the tenant of the user
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,

    /// login: the user name
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,

    /// login: file whose first line is the password (never printed)
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Correctness mode: the limit of the test tenants, e.g. 100/1m or 100/1m:20 (burst
    /// defaults to the rate); exit status 3 when any key is over-admitted
    #[arg(long, value_name = "RATE/PERIOD[:BURST]", value_parser = parse_limit)]
    pub verify_limit: Option<LimitSpec>,

    /// File holding the admin token (never printed): with --verify-limit and check it sets the
    /// limit; with login it creates the login user first (no password change required; an
    /// existing user is kept as it is)
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Open loop's in-flight cap unless `--max-in-flight` says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 10_000;

/// `--scenario` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// portcullis.v1.RateLimitService/Check
    Check,
    /// envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit (any Envoy RLS)
    EnvoyRls,
    /// portcullis.v1.AuthService/VerifyToken with tokens from --token-file
    Verify,
    /// portcullis.v1.AuthService/Login
    Login,
    /// several of the above, weighted by --mix
    Mixed,
}

/// `--distribution` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistributionArg {
    /// every tenant and key equally likely
    Uniform,
    /// rank r drawn ∝ 1/r^s (--zipf-exponent)
    Zipfian,
}

impl Cli {
    /// Checks the rules that span several flags; the error names the flags.
    pub fn validate(&self) -> Result<(), clap::Error> {
        let mix = self.mix();
        let fail = |kind: ErrorKind, message: String| Err(Cli::command().error(kind, message));
        let has = |kind: ScenarioKind| mix.contains(kind);
        match (self.scenario, &self.mix) {
            (ScenarioArg::Mixed, None) => {
                return fail(
                    ErrorKind::MissingRequiredArgument,
                    "--scenario mixed needs --mix, e.g. --mix check=8,envoy-rls=2,verify=1".into(),
                );
            }
            (s, Some(_)) if s != ScenarioArg::Mixed => {
                return fail(
                    ErrorKind::ArgumentConflict,
                    "--mix is only used with --scenario mixed".into(),
                );
            }
            _ => {}
        }
        let needs: [(bool, bool, &str); 5] = [
            (
                has(ScenarioKind::EnvoyRls),
                self.domain.is_some(),
                "envoy-rls needs --domain",
            ),
            (
                has(ScenarioKind::Verify),
                self.token_file.is_some(),
                "verify needs --token-file",
            ),
            (
                has(ScenarioKind::Login),
                self.tenant.is_some(),
                "login needs --tenant",
            ),
            (
                has(ScenarioKind::Login),
                self.username.is_some(),
                "login needs --username",
            ),
            (
                has(ScenarioKind::Login),
                self.password_file.is_some(),
                "login needs --password-file",
            ),
        ];
        if let Some((_, _, message)) = needs.iter().find(|(used, given, _)| *used && !*given) {
            return fail(ErrorKind::MissingRequiredArgument, (*message).to_owned());
        }
        let unused: [(bool, bool, &str); 9] = [
            (
                self.max_in_flight.is_some(),
                self.rate.is_some(),
                "--max-in-flight is only used with --rate (open loop)",
            ),
            (
                self.resource.is_some(),
                has(ScenarioKind::Check),
                "--resource is only used by check",
            ),
            (
                self.domain.is_some(),
                has(ScenarioKind::EnvoyRls),
                "--domain is only used by envoy-rls",
            ),
            (
                !self.descriptors.is_empty(),
                has(ScenarioKind::EnvoyRls),
                "--descriptor is only used by envoy-rls",
            ),
            (
                self.token_file.is_some(),
                has(ScenarioKind::Verify),
                "--token-file is only used by verify",
            ),
            (
                self.tenant.is_some(),
                has(ScenarioKind::Login),
                "--tenant is only used by login (see --tenants for the rate-limit scenarios)",
            ),
            (
                self.username.is_some(),
                has(ScenarioKind::Login),
                "--username is only used by login",
            ),
            (
                self.password_file.is_some(),
                has(ScenarioKind::Login),
                "--password-file is only used by login",
            ),
            (
                self.zipf_exponent.is_some(),
                self.distribution == DistributionArg::Zipfian,
                "--zipf-exponent is only used with --distribution zipfian",
            ),
        ];
        if let Some((_, _, message)) = unused.iter().find(|(given, used, _)| *given && !*used) {
            return fail(ErrorKind::ArgumentConflict, (*message).to_owned());
        }
        let rate_limited = has(ScenarioKind::Check) || has(ScenarioKind::EnvoyRls);
        if self.verify_limit.is_some() && !rate_limited {
            return fail(
                ErrorKind::ArgumentConflict,
                "--verify-limit needs a rate-limit scenario (check, envoy-rls, or a mix with one)"
                    .into(),
            );
        }
        let sets_limits = self.verify_limit.is_some() && has(ScenarioKind::Check);
        if sets_limits && self.admin_token_file.is_none() {
            return fail(
                ErrorKind::MissingRequiredArgument,
                "--verify-limit with check needs --admin-token-file (the limit is set through \
                 AdminService.SetTenantLimit)"
                    .into(),
            );
        }
        if self.admin_token_file.is_some() && !sets_limits && !has(ScenarioKind::Login) {
            return fail(
                ErrorKind::ArgumentConflict,
                "--admin-token-file is only used to set --verify-limit for check or to create \
                 the login user"
                    .into(),
            );
        }
        Ok(())
    }

    /// The scenario mix (a single scenario is a mix of one).
    pub fn mix(&self) -> Mix {
        match (self.scenario, &self.mix) {
            (ScenarioArg::Check, _) => Mix::single(ScenarioKind::Check),
            (ScenarioArg::EnvoyRls, _) => Mix::single(ScenarioKind::EnvoyRls),
            (ScenarioArg::Verify, _) => Mix::single(ScenarioKind::Verify),
            (ScenarioArg::Login, _) => Mix::single(ScenarioKind::Login),
            (ScenarioArg::Mixed, Some(mix)) => mix.clone(),
            // validate() rejects mixed without --mix; check is a harmless stand-in.
            (ScenarioArg::Mixed, None) => Mix::single(ScenarioKind::Check),
        }
    }

    /// The load mode.
    pub fn mode(&self) -> Mode {
        match (self.concurrency, self.rate) {
            (_, Some(rate)) => Mode::Open {
                rate,
                max_in_flight: self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            },
            (Some(concurrency), None) => Mode::Closed { concurrency },
            // clap's required "mode" group guarantees one of them.
            (None, None) => Mode::Closed { concurrency: 1 },
        }
    }

    /// The key distribution.
    pub fn shape(&self) -> Shape {
        match self.distribution {
            DistributionArg::Uniform => Shape::Uniform,
            DistributionArg::Zipfian => Shape::Zipfian {
                exponent: self.zipf_exponent.unwrap_or(1.0),
            },
        }
    }

    /// The Envoy descriptors of each call.
    pub fn descriptor_templates(&self) -> Vec<DescriptorTemplate> {
        if self.descriptors.is_empty() {
            vec![DescriptorTemplate::default_template()]
        } else {
            self.descriptors.clone()
        }
    }

    /// An input error (unreadable file, …) reported like a flag error, exit status 2.
    pub fn input_error(message: String) -> clap::Error {
        Cli::command().error(ErrorKind::ValueValidation, message)
    }
}

/// `--target`: an http:// URL with a host.
fn parse_target(s: &str) -> Result<String, String> {
    let uri: tonic::codegen::http::Uri = s
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected e.g. http://127.0.0.1:50051"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https is not supported (this build has no TLS); use http://".into());
        }
        _ => return Err("expected an http:// URL, e.g. http://127.0.0.1:50051".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// `--mix`.
fn parse_mix(s: &str) -> Result<Mix, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// `--descriptor`.
fn parse_descriptor(s: &str) -> Result<DescriptorTemplate, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// `--verify-limit`.
fn parse_limit(s: &str) -> Result<LimitSpec, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// `--rate`: a finite number > 0.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Ok(r),
        _ => Err("expected calls per second, a number > 0 and <= 10000000 (e.g. 5000)".into()),
    }
}

/// `--zipf-exponent`: a finite number >= 0.
fn parse_exponent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(e) if e.is_finite() && e >= 0.0 => Ok(e),
        _ => Err("expected a number >= 0 (1.0 is the classic Zipf law)".into()),
    }
}

/// A humantime duration, e.g. `30s`, `1m30s`, `250ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 1m, 250ms)"))
}

/// A humantime duration > 0.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err("must be longer than 0".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        let cli =
            Cli::try_parse_from(std::iter::once("portcullis-load").chain(args.split_whitespace()))?;
        cli.validate()?;
        Ok(cli)
    }

    fn error(args: &str) -> String {
        parse(args).unwrap_err().to_string()
    }

    const T: &str = "--target http://127.0.0.1:50051";

    #[test]
    fn defaults_and_modes() {
        let cli = parse(&format!("{T} --concurrency 64")).unwrap();
        assert_eq!(cli.mode(), Mode::Closed { concurrency: 64 });
        assert_eq!(cli.mix(), Mix::single(ScenarioKind::Check));
        assert_eq!(cli.duration, Duration::from_secs(30));
        assert_eq!(cli.warmup, Duration::from_secs(5));
        assert_eq!(cli.timeout, Duration::from_secs(1));
        assert_eq!(cli.connections, 8);
        let open = parse(&format!("{T} --rate 5000 --target http://127.0.0.1:50052")).unwrap();
        assert_eq!(
            open.mode(),
            Mode::Open {
                rate: 5000.0,
                max_in_flight: 10_000
            }
        );
        assert_eq!(open.targets.len(), 2);
    }

    #[test]
    fn exactly_one_mode() {
        let first_line = |args: &str| error(args).lines().next().unwrap_or_default().to_owned();
        assert!(first_line(T).contains("required"), "{}", first_line(T));
        let both = first_line(&format!("{T} --concurrency 1 --rate 5"));
        assert!(
            both.contains("--rate") && both.contains("--concurrency"),
            "{both}"
        );
        let cap = first_line(&format!("{T} --concurrency 1 --max-in-flight 5"));
        assert!(cap.contains("--max-in-flight"), "{cap}");
    }

    #[test]
    fn flag_errors_name_the_flag() {
        for (args, flag) in [
            ("--target ftp://x --concurrency 1", "--target"),
            ("--target https://x --concurrency 1", "--target"),
            (&format!("{T} --concurrency 0"), "--concurrency"),
            (&format!("{T} --rate -5"), "--rate"),
            (&format!("{T} --rate 1 --duration 0s"), "--duration"),
            (&format!("{T} --rate 1 --timeout soon"), "--timeout"),
            (
                &format!("{T} --rate 1 --scenario mixed --mix check=x"),
                "--mix",
            ),
            (
                &format!("{T} --rate 1 --verify-limit 100"),
                "--verify-limit",
            ),
            (
                &format!("{T} --rate 1 --distribution zipfian --zipf-exponent -1"),
                "--zipf-exponent",
            ),
            (
                &format!("{T} --rate 1 --scenario envoy-rls --domain d --descriptor a={{x}}"),
                "--descriptor",
            ),
        ] {
            let e = error(args);
            // The first line is the message proper (the usage line names every mode flag).
            let first = e.lines().next().unwrap_or_default();
            assert!(first.contains(flag), "{args}: {e}");
        }
    }

    #[test]
    fn scenario_flags_are_required_where_used() {
        assert!(error(&format!("{T} --rate 1 --scenario mixed")).contains("--mix"));
        assert!(error(&format!("{T} --rate 1 --scenario envoy-rls")).contains("--domain"));
        assert!(error(&format!("{T} --rate 1 --scenario verify")).contains("--token-file"));
        assert!(
            error(&format!(
                "{T} --rate 1 --scenario login --tenant a --username u"
            ))
            .contains("--password-file")
        );
        assert!(
            error(&format!(
                "{T} --rate 1 --scenario mixed --mix check=1,envoy-rls=1"
            ))
            .contains("--domain")
        );
        assert!(error(&format!("{T} --rate 1 --mix check=1")).contains("--scenario mixed"));
    }

    #[test]
    fn flags_of_absent_scenarios_are_rejected() {
        assert!(error(&format!("{T} --rate 1 --domain d")).contains("--domain"));
        assert!(error(&format!("{T} --rate 1 --tenant a")).contains("--tenants"));
        assert!(error(&format!("{T} --rate 1 --zipf-exponent 2")).contains("zipfian"));
    }

    #[test]
    fn correctness_flags() {
        assert!(
            error(&format!("{T} --rate 1 --verify-limit 100/1m")).contains("--admin-token-file")
        );
        // envoy-rls states the limit itself: no admin token.
        let cli = parse(&format!(
            "{T} --rate 1 --scenario envoy-rls --domain d --verify-limit 10/1s"
        ))
        .unwrap();
        assert_eq!(cli.verify_limit.unwrap().burst, 10);
        assert!(
            error(&format!(
                "{T} --rate 1 --scenario envoy-rls --domain d --verify-limit 10/1s --admin-token-file f"
            ))
            .contains("--admin-token-file")
        );
        assert!(
            error(&format!(
                "{T} --rate 1 --scenario verify --token-file f --verify-limit 1/1s"
            ))
            .contains("--verify-limit")
        );
        parse(&format!(
            "{T} --rate 1 --verify-limit 100/1m:5 --admin-token-file f"
        ))
        .unwrap();
        // login: the token creates the user.
        parse(&format!(
            "{T} --rate 1 --scenario login --tenant t --username u --password-file p \
             --admin-token-file f"
        ))
        .unwrap();
    }

    #[test]
    fn mixed_scenario() {
        let cli = parse(&format!(
            "{T} --concurrency 4 --scenario mixed --mix check=8,envoy-rls=2,verify=1 \
             --domain edge --token-file tokens"
        ))
        .unwrap();
        assert_eq!(cli.mix().describe(), "check=8,envoy-rls=2,verify=1");
        assert_eq!(
            cli.descriptor_templates(),
            [DescriptorTemplate::default_template()]
        );
    }

    #[test]
    fn help_renders() {
        Cli::command().debug_assert();
    }
}
