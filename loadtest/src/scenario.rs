//! The scenarios: what each one sends, how the mix picks one, and how an answer counts.

use std::str::FromStr;
use std::time::Duration;

use portcullis_client::envoy::common::RateLimitDescriptor;
use portcullis_client::envoy::common::rate_limit_descriptor::Entry;
use portcullis_client::envoy::rls;
use portcullis_client::pb;
use rand::{Rng, RngExt};
use tonic::transport::Channel;

use crate::correctness::{LimitSpec, policy_matches};
use crate::keyspace::KeySpace;
use crate::secret::Secret;

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScenarioKind {
    /// `portcullis.v1.RateLimitService/Check`.
    Check,
    /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
    EnvoyRls,
    /// `portcullis.v1.AuthService/VerifyToken`.
    Verify,
    /// `portcullis.v1.AuthService/Login`.
    Login,
}

impl ScenarioKind {
    /// Every kind, in index order.
    pub const ALL: [ScenarioKind; 4] = [Self::Check, Self::EnvoyRls, Self::Verify, Self::Login];

    /// The name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::EnvoyRls => "envoy-rls",
            Self::Verify => "verify",
            Self::Login => "login",
        }
    }

    /// Position in [`Self::ALL`], for per-kind arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::Check => 0,
            Self::EnvoyRls => 1,
            Self::Verify => 2,
            Self::Login => 3,
        }
    }

    /// Whether answers are allow/deny decisions on a (tenant, key) counter.
    pub const fn is_rate_limit(self) -> bool {
        matches!(self, Self::Check | Self::EnvoyRls)
    }
}

impl FromStr for ScenarioKind {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| MixError::UnknownScenario(s.to_owned()))
    }
}

/// Weighted choice among scenarios (a single scenario is a mix of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Scenarios with a positive weight, in the order given.
    entries: Vec<(ScenarioKind, u32)>,
    /// Sum of the weights: a roll in `0..total` picks one.
    total: u64,
}

/// Why a `--mix` value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    /// Nothing given.
    #[error("the mix is empty; expected NAME=WEIGHT,... e.g. check=8,envoy-rls=2,verify=1")]
    Empty,
    /// An item without `=`.
    #[error("`{0}` is not NAME=WEIGHT (e.g. check=8)")]
    MissingWeight(String),
    /// An unknown name.
    #[error("unknown scenario `{0}` (expected check, envoy-rls, verify or login)")]
    UnknownScenario(String),
    /// A weight that is not a whole number.
    #[error("weight `{weight}` of {scenario} is not a whole number >= 0")]
    BadWeight {
        /// The scenario.
        scenario: &'static str,
        /// The text given.
        weight: String,
    },
    /// A scenario named twice.
    #[error("{0} appears twice")]
    Duplicate(&'static str),
    /// Every weight is zero.
    #[error("every weight is 0; at least one must be positive")]
    AllZero,
}

impl Mix {
    /// Only `kind`.
    pub fn single(kind: ScenarioKind) -> Self {
        Self {
            entries: vec![(kind, 1)],
            total: 1,
        }
    }

    /// The scenarios with a positive weight.
    pub fn kinds(&self) -> impl Iterator<Item = ScenarioKind> + '_ {
        self.entries.iter().map(|&(k, _)| k)
    }

    /// Whether `kind` is ever picked.
    pub fn contains(&self, kind: ScenarioKind) -> bool {
        self.kinds().any(|k| k == kind)
    }

    /// `check=8,envoy-rls=2` (for reports).
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The scenario for a roll in `0..total` (larger rolls wrap).
    pub fn pick(&self, roll: u64) -> ScenarioKind {
        let mut roll = roll % self.total.max(1);
        for &(kind, weight) in &self.entries {
            if roll < u64::from(weight) {
                return kind;
            }
            roll -= u64::from(weight);
        }
        // Unreachable while total is the sum of the weights; the first entry is a safe answer.
        self.entries.first().map_or(ScenarioKind::Check, |e| e.0)
    }

    /// Draws a scenario.
    pub fn choose<R: Rng + ?Sized>(&self, rng: &mut R) -> ScenarioKind {
        match self.entries.as_slice() {
            // One scenario: no draw, so its key sequence matches a single-scenario run.
            [(only, _)] => *only,
            _ => self.pick(rng.random_range(0..self.total)),
        }
    }
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries: Vec<(ScenarioKind, u32)> = Vec::new();
        let mut seen: Vec<ScenarioKind> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| MixError::MissingWeight(item.to_owned()))?;
            let kind: ScenarioKind = name.trim().parse()?;
            let weight: u32 = weight.trim().parse().map_err(|_| MixError::BadWeight {
                scenario: kind.name(),
                weight: weight.to_owned(),
            })?;
            if seen.contains(&kind) {
                return Err(MixError::Duplicate(kind.name()));
            }
            seen.push(kind);
            if weight > 0 {
                entries.push((kind, weight));
            }
        }
        if seen.is_empty() {
            return Err(MixError::Empty);
        }
        if entries.is_empty() {
            return Err(MixError::AllZero);
        }
        let total = entries.iter().map(|&(_, w)| u64::from(w)).sum();
        Ok(Self { entries, total })
    }
}

/// One Envoy descriptor with `{tenant}` and `{key}` placeholders in its values, e.g.
/// `tenant={tenant},key={key}` or `remote_address={key}` or `generic_key=api,user={tenant}/{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorTemplate {
    /// (entry key, value parts), outermost first.
    entries: Vec<(String, Vec<Part>)>,
}

/// A piece of a descriptor value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text copied as is.
    Literal(String),
    /// The tenant name.
    Tenant,
    /// The key name.
    Key,
}

/// Why a `--descriptor` value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// No entries.
    #[error("the descriptor is empty; expected KEY=VALUE,... e.g. tenant={{tenant}},key={{key}}")]
    Empty,
    /// An entry without `=` or with an empty key.
    #[error("`{0}` is not KEY=VALUE with a non-empty KEY")]
    Entry(String),
    /// A placeholder other than `{tenant}` and `{key}`, or an unmatched brace.
    #[error("`{0}`: only the placeholders {{tenant}} and {{key}} are known")]
    Placeholder(String),
}

impl FromStr for DescriptorTemplate {
    type Err = DescriptorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries = Vec::new();
        for item in s.split(',').filter(|i| !i.trim().is_empty()) {
            let (key, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| DescriptorError::Entry(item.to_owned()))?;
            entries.push((key.trim().to_owned(), parse_value(value)?));
        }
        if entries.is_empty() {
            return Err(DescriptorError::Empty);
        }
        Ok(Self { entries })
    }
}

/// Splits a value into literal text and placeholders.
fn parse_value(value: &str) -> Result<Vec<Part>, DescriptorError> {
    let mut parts = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(Part::Literal(rest.to_owned()));
                break;
            }
            Some(i) => {
                if i > 0 {
                    parts.push(Part::Literal(rest[..i].to_owned()));
                }
                let tail = &rest[i..];
                let (part, after) = if let Some(after) = tail.strip_prefix("{tenant}") {
                    (Part::Tenant, after)
                } else if let Some(after) = tail.strip_prefix("{key}") {
                    (Part::Key, after)
                } else {
                    return Err(DescriptorError::Placeholder(value.to_owned()));
                };
                parts.push(part);
                rest = after;
            }
        }
    }
    Ok(parts)
}

impl DescriptorTemplate {
    /// `tenant={tenant},key={key}`.
    pub fn default_template() -> Self {
        Self {
            entries: vec![
                ("tenant".to_owned(), vec![Part::Tenant]),
                ("key".to_owned(), vec![Part::Key]),
            ],
        }
    }

    /// The descriptor for (tenant, key).
    pub fn render(&self, tenant: &str, key: &str) -> RateLimitDescriptor {
        let entries = self
            .entries
            .iter()
            .map(|(name, parts)| {
                let mut value = String::new();
                for part in parts {
                    value.push_str(match part {
                        Part::Literal(text) => text,
                        Part::Tenant => tenant,
                        Part::Key => key,
                    });
                }
                Entry {
                    key: name.clone(),
                    value,
                }
            })
            .collect();
        RateLimitDescriptor {
            entries,
            limit: None,
            hits_addend: None,
        }
    }
}

/// Settings of the envoy-rls scenario.
#[derive(Debug, Clone)]
pub struct EnvoySettings {
    /// The rate limit domain (selects the server's config).
    pub domain: String,
    /// The descriptors of each request.
    pub descriptors: Vec<DescriptorTemplate>,
}

/// Settings of the login scenario.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// Tenant of the user.
    pub tenant: String,
    /// Login name.
    pub username: String,
    /// The password, from a file.
    pub password: Secret,
}

/// Everything needed to build requests; shared by all executors.
#[derive(Debug)]
pub struct Workload {
    /// Which scenario each request is.
    pub mix: Mix,
    /// Which (tenant, key) each rate-limit request addresses.
    pub keyspace: KeySpace,
    /// Tenant name by rank (precomputed: no formatting per request).
    pub tenant_names: Vec<String>,
    /// Key name by rank.
    pub key_names: Vec<String>,
    /// The `resource` of Check requests ("" is the server's `default`).
    pub resource: String,
    /// Envoy settings, when the mix has envoy-rls.
    pub envoy: Option<EnvoySettings>,
    /// Access tokens for verify, when the mix has it.
    pub tokens: Vec<Secret>,
    /// Login settings, when the mix has login.
    pub login: Option<LoginSettings>,
    /// In correctness mode, the policy Check answers must carry.
    pub expected_policy: Option<LimitSpec>,
}

/// A request ready to send.
#[derive(Debug)]
pub struct Call {
    /// Its scenario.
    pub scenario: ScenarioKind,
    /// (tenant rank, key rank) for rate-limit calls, for the correctness ledger.
    pub key: Option<(u32, u32)>,
    /// The message.
    body: Body,
}

/// The message of a call. Its `Debug` names only the RPC: messages carry tokens and passwords.
enum Body {
    /// Check.
    Check(pb::CheckRequest),
    /// ShouldRateLimit.
    Envoy(rls::RateLimitRequest),
    /// VerifyToken.
    Verify(pb::VerifyTokenRequest),
    /// Login.
    Login(pb::LoginRequest),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Body::Check(_) => "CheckRequest",
            Body::Envoy(_) => "RateLimitRequest",
            Body::Verify(_) => "VerifyTokenRequest",
            Body::Login(_) => "LoginRequest",
        })
    }
}

impl Workload {
    /// Draws the next request.
    pub fn next_call<R: Rng + ?Sized>(&self, rng: &mut R) -> Call {
        let scenario = self.mix.choose(rng);
        match scenario {
            ScenarioKind::Check => {
                let (t, k) = self.keyspace.sample(rng);
                Call {
                    scenario,
                    key: Some((t, k)),
                    body: Body::Check(pb::CheckRequest {
                        tenant_id: self.tenant_names[t as usize].clone(),
                        resource: self.resource.clone(),
                        key: self.key_names[k as usize].clone(),
                        cost: 1,
                    }),
                }
            }
            ScenarioKind::EnvoyRls => {
                let (t, k) = self.keyspace.sample(rng);
                let (tenant, key) = (&self.tenant_names[t as usize], &self.key_names[k as usize]);
                let (domain, descriptors) = match &self.envoy {
                    Some(e) => (
                        e.domain.clone(),
                        e.descriptors
                            .iter()
                            .map(|d| d.render(tenant, key))
                            .collect(),
                    ),
                    // Validation requires --domain with envoy-rls; an empty domain would
                    // still be a well-formed request.
                    None => (String::new(), Vec::new()),
                };
                Call {
                    scenario,
                    key: Some((t, k)),
                    body: Body::Envoy(rls::RateLimitRequest {
                        domain,
                        descriptors,
                        hits_addend: 1,
                    }),
                }
            }
            ScenarioKind::Verify => {
                let access_token = if self.tokens.is_empty() {
                    String::new()
                } else {
                    let i = rng.random_range(0..self.tokens.len());
                    self.tokens[i].expose().to_owned()
                };
                Call {
                    scenario,
                    key: None,
                    body: Body::Verify(pb::VerifyTokenRequest {
                        access_token,
                        ..Default::default()
                    }),
                }
            }
            ScenarioKind::Login => {
                let request = match &self.login {
                    Some(l) => pb::LoginRequest {
                        tenant_id: l.tenant.clone(),
                        username: l.username.clone(),
                        password: l.password.expose().to_owned(),
                        client_ip: "127.0.0.1".to_owned(),
                    },
                    None => pb::LoginRequest::default(),
                };
                Call {
                    scenario,
                    key: None,
                    body: Body::Login(request),
                }
            }
        }
    }
}

/// How an answer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A rate-limit decision.
    Decision {
        /// Allowed (Check `allowed`, Envoy `OK`).
        allowed: bool,
        /// Made by the fail mode because the store was unreachable (Check only).
        degraded: bool,
        /// The Check answer carried another policy than the expected one.
        policy_mismatch: bool,
    },
    /// Envoy answered `UNKNOWN` as the overall code.
    UnknownDecision,
    /// verify or login answered OK.
    Answered,
    /// An error status (a call not answered within the timeout is `DEADLINE_EXCEEDED`).
    Error(tonic::Code),
}

/// Sends `call` on `channel` and waits at most `timeout` for the answer.
pub async fn execute(
    call: Call,
    channel: Channel,
    timeout: Duration,
    expected: Option<LimitSpec>,
) -> Outcome {
    let answer = tokio::time::timeout(timeout, send(call.body, channel, timeout, expected)).await;
    match answer {
        Ok(Ok(outcome)) => outcome,
        // tonic's own client timer (from the grpc-timeout we send) reports CANCELLED.
        Ok(Err(status))
            if status.code() == tonic::Code::Cancelled && status.message().contains("Timeout") =>
        {
            Outcome::Error(tonic::Code::DeadlineExceeded)
        }
        Ok(Err(status)) => Outcome::Error(status.code()),
        Err(_) => Outcome::Error(tonic::Code::DeadlineExceeded),
    }
}

/// A request carrying `timeout` as its gRPC deadline, so the server can give up in step.
fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The RPC itself.
async fn send(
    body: Body,
    channel: Channel,
    timeout: Duration,
    expected: Option<LimitSpec>,
) -> Result<Outcome, tonic::Status> {
    Ok(match body {
        Body::Check(m) => {
            let mut client = pb::rate_limit_service_client::RateLimitServiceClient::new(channel);
            let r = client.check(request(m, timeout)).await?.into_inner();
            let policy_mismatch = expected.is_some_and(|limit| {
                !r.policy
                    .as_ref()
                    .is_some_and(|p| policy_matches(&limit, p.rate, p.period.as_ref(), p.burst))
            });
            Outcome::Decision {
                allowed: r.allowed,
                degraded: r.degraded,
                policy_mismatch,
            }
        }
        Body::Envoy(m) => {
            let mut client = rls::rate_limit_service_client::RateLimitServiceClient::new(channel);
            let r = client
                .should_rate_limit(request(m, timeout))
                .await?
                .into_inner();
            match rls::rate_limit_response::Code::try_from(r.overall_code) {
                Ok(rls::rate_limit_response::Code::Ok) => Outcome::Decision {
                    allowed: true,
                    degraded: false,
                    policy_mismatch: false,
                },
                Ok(rls::rate_limit_response::Code::OverLimit) => Outcome::Decision {
                    allowed: false,
                    degraded: false,
                    policy_mismatch: false,
                },
                _ => Outcome::UnknownDecision,
            }
        }
        Body::Verify(m) => {
            let mut client = pb::auth_service_client::AuthServiceClient::new(channel);
            client.verify_token(request(m, timeout)).await?;
            Outcome::Answered
        }
        Body::Login(m) => {
            let mut client = pb::auth_service_client::AuthServiceClient::new(channel);
            client.login(request(m, timeout)).await?;
            Outcome::Answered
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_weights_in_order() {
        let mix: Mix = "check=8, envoy-rls=2,verify=1".parse().unwrap();
        assert_eq!(mix.describe(), "check=8,envoy-rls=2,verify=1");
        assert_eq!(mix.pick(0), ScenarioKind::Check);
        assert_eq!(mix.pick(7), ScenarioKind::Check);
        assert_eq!(mix.pick(8), ScenarioKind::EnvoyRls);
        assert_eq!(mix.pick(9), ScenarioKind::EnvoyRls);
        assert_eq!(mix.pick(10), ScenarioKind::Verify);
        assert!(!mix.contains(ScenarioKind::Login));
    }

    #[test]
    fn zero_weights_drop_the_scenario() {
        let mix: Mix = "check=0,login=3".parse().unwrap();
        assert!(!mix.contains(ScenarioKind::Check));
        assert_eq!(mix.pick(0), ScenarioKind::Login);
    }

    #[test]
    fn mix_errors_name_the_problem() {
        let err = |s: &str| s.parse::<Mix>().unwrap_err();
        assert_eq!(err(""), MixError::Empty);
        assert_eq!(err(" , "), MixError::Empty);
        assert_eq!(err("check"), MixError::MissingWeight("check".into()));
        assert_eq!(err("chek=1"), MixError::UnknownScenario("chek".into()));
        assert_eq!(err("mixed=1"), MixError::UnknownScenario("mixed".into()));
        assert_eq!(
            err("check=x"),
            MixError::BadWeight {
                scenario: "check",
                weight: "x".into()
            }
        );
        assert!(matches!(err("check=-1"), MixError::BadWeight { .. }));
        assert_eq!(err("check=1,check=2"), MixError::Duplicate("check"));
        assert_eq!(err("check=0,verify=0"), MixError::AllZero);
        assert!(err("chek=1").to_string().contains("envoy-rls"));
    }

    #[test]
    fn choose_follows_the_weights() {
        use rand::SeedableRng;
        let mix: Mix = "check=3,verify=1".parse().unwrap();
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(5);
        let checks = (0..40_000)
            .filter(|_| mix.choose(&mut rng) == ScenarioKind::Check)
            .count();
        assert!((29_000..31_000).contains(&checks), "{checks}");
    }

    #[test]
    fn descriptor_templates_render_placeholders() {
        let d: DescriptorTemplate = "generic_key=api,user={tenant}/{key}!".parse().unwrap();
        let r = d.render("acme", "u1");
        let got: Vec<(&str, &str)> = r
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(got, [("generic_key", "api"), ("user", "acme/u1!")]);
        assert_eq!(
            "tenant={tenant},key={key}"
                .parse::<DescriptorTemplate>()
                .unwrap(),
            DescriptorTemplate::default_template()
        );
    }

    #[test]
    fn calls_never_show_secrets_in_debug_output() {
        let workload = Workload {
            mix: "verify=1,login=1".parse().unwrap(),
            keyspace: KeySpace::new(1, 1, crate::keyspace::Shape::Uniform).unwrap(),
            tenant_names: vec!["t0".into()],
            key_names: vec!["k0".into()],
            resource: String::new(),
            envoy: None,
            tokens: vec![Secret::new("token-value-123")],
            login: Some(LoginSettings {
                tenant: "acme".into(),
                username: "alice".into(),
                password: Secret::new("password-value-456"),
            }),
            expected_policy: None,
        };
        let mut rng = <rand::rngs::Xoshiro256PlusPlus as rand::SeedableRng>::seed_from_u64(1);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..50 {
            let call = workload.next_call(&mut rng);
            kinds.insert(call.scenario);
            let shown = format!("{call:?}");
            assert!(
                !shown.contains("token-value") && !shown.contains("password-value"),
                "{shown}"
            );
        }
        assert_eq!(kinds.len(), 2);
        let shown = format!("{workload:?}");
        assert!(
            !shown.contains("token-value") && !shown.contains("password-value"),
            "{shown}"
        );
    }

    #[test]
    fn envoy_calls_address_the_drawn_key() {
        let workload = Workload {
            mix: Mix::single(ScenarioKind::EnvoyRls),
            keyspace: KeySpace::new(2, 3, crate::keyspace::Shape::Uniform).unwrap(),
            tenant_names: vec!["ta".into(), "tb".into()],
            key_names: vec!["k0".into(), "k1".into(), "k2".into()],
            resource: String::new(),
            envoy: Some(EnvoySettings {
                domain: "edge".into(),
                descriptors: vec![DescriptorTemplate::default_template()],
            }),
            tokens: Vec::new(),
            login: None,
            expected_policy: None,
        };
        let mut rng = <rand::rngs::Xoshiro256PlusPlus as rand::SeedableRng>::seed_from_u64(2);
        for _ in 0..20 {
            let call = workload.next_call(&mut rng);
            let (t, k) = call.key.unwrap();
            let Body::Envoy(request) = call.body else {
                panic!("not an Envoy call");
            };
            assert_eq!(request.domain, "edge");
            let entries = &request.descriptors[0].entries;
            assert_eq!(entries[0].value, workload.tenant_names[t as usize]);
            assert_eq!(entries[1].value, workload.key_names[k as usize]);
        }
    }

    #[test]
    fn descriptor_template_errors() {
        let err = |s: &str| s.parse::<DescriptorTemplate>().unwrap_err();
        assert_eq!(err(""), DescriptorError::Empty);
        assert_eq!(err("tenant"), DescriptorError::Entry("tenant".into()));
        assert_eq!(err("={key}"), DescriptorError::Entry("={key}".into()));
        assert_eq!(
            err("a={user}"),
            DescriptorError::Placeholder("{user}".into())
        );
        assert_eq!(err("a={key"), DescriptorError::Placeholder("{key".into()));
        assert_eq!(err("a=x}"), DescriptorError::Placeholder("x}".into()));
    }
}
