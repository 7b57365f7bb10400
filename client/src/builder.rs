//! [`PortcullisBuilder`]: replicas, TLS, timeouts, deadlines, retries and tokens of a handle.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tower::retry::budget::TpsBudget;

use crate::discovery::{self, Discovery, EndpointSettings, Member, Source, TlsFiles};
use crate::error::Error;
use crate::handle::{CallKind, Deadlines, Inner, Portcullis};
use crate::retry::RetryPolicy;

/// A secret kept out of `Debug`.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Settings of a [`Portcullis`] handle; [`build`](Self::build) makes it without touching the
/// network.
#[derive(Debug, Clone)]
pub struct PortcullisBuilder {
    /// Static URLs, when given.
    endpoints: Vec<String>,
    /// A name to resolve again and again, and its port.
    dns: Option<(String, u16)>,
    /// How often DNS is resolved and replicas are probed.
    resolve_every: Duration,
    /// Certificate files, when the handle speaks TLS.
    tls: Option<TlsFiles>,
    /// How often the certificate and token files are checked for changes.
    reload_every: Duration,
    /// Connection settings.
    settings: EndpointSettings,
    /// The deadline of each kind of call.
    deadlines: Deadlines,
    /// Attempts per call (first included).
    max_attempts: usize,
    /// Backoff bounds.
    backoff: (Duration, Duration),
    /// TpsBudget's (ttl, min retries per second, retry share of calls).
    budget: (Duration, u32, f32),
    /// Admin bearer token.
    admin_token: Option<Secret>,
    /// File holding the admin bearer token (re-read when it changes).
    admin_token_file: Option<PathBuf>,
    /// Bearer token of WatchSecurityEvents.
    watch_token: Option<Secret>,
}

impl Default for PortcullisBuilder {
    fn default() -> Self {
        PortcullisBuilder {
            endpoints: Vec::new(),
            dns: None,
            resolve_every: Duration::from_secs(5),
            tls: None,
            reload_every: Duration::from_secs(5),
            settings: EndpointSettings {
                connect_timeout: Duration::from_secs(1),
                keepalive_interval: Duration::from_secs(30),
                keepalive_timeout: Duration::from_secs(10),
                tcp_nodelay: true,
            },
            deadlines: Deadlines::default(),
            max_attempts: 3,
            backoff: (Duration::from_millis(10), Duration::from_millis(500)),
            budget: (Duration::from_secs(10), 10, 0.2),
            admin_token: None,
            admin_token_file: None,
            watch_token: None,
        }
    }
}

impl PortcullisBuilder {
    /// A static list of replicas, e.g. `["http://a:50051", "http://b:50051"]` (`https://`
    /// with [`tls`](Self::tls)). Calls are balanced over those that accept connections.
    pub fn endpoints<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = urls.into_iter().map(Into::into).collect();
        self
    }

    /// A name whose addresses are the replicas (a Kubernetes headless Service), resolved
    /// every [`resolve_every`](Self::resolve_every).
    pub fn dns(mut self, host: impl Into<String>, port: u16) -> Self {
        self.dns = Some((host.into(), port));
        self
    }

    /// How often DNS is resolved again and replicas refusing connections are probed (5 s).
    pub fn resolve_every(mut self, every: Duration) -> Self {
        self.resolve_every = every;
        self
    }

    /// TLS trusting the CAs in `ca_pem` (a file), presenting `identity` (certificate chain
    /// and key files) for mTLS, checking the server certificate for `server_name` (default:
    /// the URL's or DNS name's host). The files are re-read when they change.
    pub fn tls(
        mut self,
        ca_pem: impl Into<PathBuf>,
        identity: Option<(PathBuf, PathBuf)>,
        server_name: Option<String>,
    ) -> Self {
        self.tls = Some(TlsFiles {
            ca: ca_pem.into(),
            identity,
            server_name,
        });
        self
    }

    /// How often the certificate and token files are checked for changes (5 s).
    pub fn reload_every(mut self, every: Duration) -> Self {
        self.reload_every = every;
        self
    }

    /// Limit on setting up a connection (1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive PING interval and timeout (30 s, 10 s).
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.settings.keepalive_interval = interval;
        self.settings.keepalive_timeout = timeout;
        self
    }

    /// TCP_NODELAY (on).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.settings.tcp_nodelay = on;
        self
    }

    /// The deadline of every call of `kind` (retries included), also sent as `grpc-timeout`.
    pub fn deadline(mut self, kind: CallKind, deadline: Duration) -> Self {
        self.deadlines.set(kind, deadline);
        self
    }

    /// Attempts per call, the first included (3; 1 disables retries).
    pub fn max_attempts(mut self, attempts: usize) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// First and largest backoff delay between attempts (10 ms, 500 ms), with jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }

    /// The retry budget shared by the handle's clones (tower's `TpsBudget`): retries may add
    /// `retry_percent` of the calls seen in the last `ttl` (1 to 60 s), plus `min_per_sec`.
    /// Defaults: 10 s, 10/s, 0.2.
    pub fn retry_budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        self.budget = (ttl, min_per_sec, retry_percent);
        self
    }

    /// The admin bearer token (admin calls).
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(Secret(token.into()));
        self
    }

    /// A file holding the admin bearer token; re-read when it changes (a token given with
    /// [`admin_token`](Self::admin_token) takes precedence).
    pub fn admin_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.admin_token_file = Some(path.into());
        self
    }

    /// The bearer token of `WatchSecurityEvents`.
    pub fn watch_token(mut self, token: impl Into<String>) -> Self {
        self.watch_token = Some(Secret(token.into()));
        self
    }

    /// Makes the handle. Needs a Tokio runtime (the balancing and discovery tasks run on it)
    /// but no server: connections are made by the first calls.
    pub fn build(self) -> Result<Portcullis, Error> {
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::InvalidConfig("build() must run inside a Tokio runtime".into()))?;
        let tls = self.tls.as_ref().map(|f| f.load().map(|t| (f.clone(), t)));
        let tls = tls.transpose()?;
        let source = match (self.dns.clone(), self.endpoints.is_empty()) {
            (Some(_), false) => {
                return Err(Error::InvalidConfig(
                    "give either endpoints or dns, not both".into(),
                ));
            }
            (None, true) => return Err(Error::InvalidConfig("no endpoints and no dns".into())),
            (Some((host, port)), true) => {
                let mut tls = tls;
                // The certificate is checked against the service's name, not a pod's IP.
                if let Some((files, config)) = &mut tls
                    && files.server_name.is_none()
                {
                    *config = config.clone().domain_name(host.clone());
                }
                return self.finish(Source::Dns { host, port }, tls);
            }
            (None, false) => Source::Static(
                self.endpoints
                    .iter()
                    .map(|url| member(url, tls.is_some()))
                    .collect::<Result<_, _>>()?,
            ),
        };
        self.finish(source, tls)
    }

    fn finish(
        self,
        source: Source,
        tls: Option<(TlsFiles, tonic::transport::ClientTlsConfig)>,
    ) -> Result<Portcullis, Error> {
        let admin = match (&self.admin_token, &self.admin_token_file) {
            (Some(token), _) => Some(Arc::new(discovery::bearer(&token.0)?)),
            (None, Some(path)) => Some(Arc::new(discovery::read_token(path)?)),
            (None, None) => None,
        };
        let admin_token = Arc::new(ArcSwapOption::new(admin));
        let watch_token = self
            .watch_token
            .as_ref()
            .map(|t| discovery::bearer(&t.0))
            .transpose()?;
        let (min_delay, max_delay) = self.backoff;
        let (ttl, min_per_sec, percent) = self.budget;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl)
            || !(0.0..=1000.0).contains(&percent)
        {
            return Err(Error::InvalidConfig(
                "retry budget: ttl 1 to 60 s, retry_percent 0 to 1000".into(),
            ));
        }
        let retry = RetryPolicy {
            max_attempts: self.max_attempts,
            min_delay,
            max_delay,
            budget: Arc::new(TpsBudget::new(ttl, min_per_sec, percent)),
        };
        let static_members = match &source {
            Source::Static(members) => members.clone(),
            Source::Dns { .. } => Vec::new(),
        };
        let (channel, changes) = Channel::balance_channel(1024.max(static_members.len() * 2));
        let mut discovery = Discovery {
            source,
            settings: self.settings,
            tls,
            token_file: self
                .admin_token
                .is_none()
                .then_some(self.admin_token_file)
                .flatten()
                .map(|path| (path, admin_token.clone())),
            changes,
            inserted: HashMap::new(),
            generation: 0,
            resolve_every: self.resolve_every,
            reload_every: self.reload_every,
        };
        discovery.insert_now(&static_members)?;
        let (probe, probes) = mpsc::channel(64);
        tokio::spawn(discovery.run(probes));
        Ok(Portcullis::from_inner(Inner {
            channel,
            deadlines: self.deadlines,
            retry,
            admin_token,
            watch_token,
            probe,
        }))
    }
}

/// A replica from its URL.
fn member(url: &str, tls: bool) -> Result<Member, Error> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Error::InvalidConfig(format!("invalid URL {url:?}")))?;
    let scheme_ok = match uri.scheme_str() {
        Some("https") => tls,
        // tonic would speak plaintext to an http:// URL even with TLS settings.
        Some("http") => !tls,
        _ => false,
    };
    if !scheme_ok {
        return Err(Error::InvalidConfig(format!(
            "{url:?}: use https:// with tls(), http:// without"
        )));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| Error::InvalidConfig(format!("{url:?} has no host")))?;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Member {
        addr: format!("{}:{port}", authority.host()),
        uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builds_without_a_server_and_hides_tokens() {
        let builder = Portcullis::builder()
            .endpoints(["http://127.0.0.1:1"])
            .admin_token("secret-admin-token-123");
        assert!(!format!("{builder:?}").contains("secret-admin-token-123"));
        let handle = builder.build().expect("lazy");
        assert!(!format!("{handle:?}").contains("secret-admin-token-123"));
    }

    #[tokio::test]
    async fn refuses_bad_configuration() {
        for builder in [
            Portcullis::builder(),
            Portcullis::builder().endpoints(["not a url"]),
            Portcullis::builder().endpoints(["https://a:1"]),
            Portcullis::builder().endpoints(["http://a:1"]).dns("a", 1),
            Portcullis::builder()
                .endpoints(["http://a:1"])
                .tls("/nonexistent/ca.pem", None, None),
        ] {
            assert!(matches!(builder.build(), Err(Error::InvalidConfig(_))));
        }
    }

    #[test]
    fn needs_a_runtime() {
        let built = Portcullis::builder().endpoints(["http://a:1"]).build();
        assert!(matches!(built, Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn default_deadlines_suit_each_call() {
        let d = Deadlines::default();
        assert!(d.get(CallKind::RateLimit) < d.get(CallKind::Jwks));
        assert!(d.get(CallKind::Jwks) < d.get(CallKind::PasswordHashing));
    }
}
