//! The background task that keeps the balanced channel's replica set: DNS, health, TLS reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::channel::Change;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::Error;

/// A key of the balanced channel: a replica's address and the settings generation it was
/// inserted with (a TLS reload inserts every replica again under a new generation).
pub(crate) type Key = (String, u64);

/// Where the replicas are.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A fixed list of URLs.
    Static(Vec<Member>),
    /// A name resolved again and again (a Kubernetes headless Service), and the port.
    Dns {
        /// The name.
        host: String,
        /// The gRPC port of every address.
        port: u16,
    },
}

/// One replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The URL calls go to.
    pub(crate) uri: http::Uri,
    /// host:port, the key in the balanced channel and the address probed.
    pub(crate) addr: String,
}

/// The certificate files and server name of a TLS handle.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// PEM of the CAs to trust.
    pub(crate) ca: PathBuf,
    /// PEM certificate chain and key presented for mTLS.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must carry (default: the URL's or DNS host).
    pub(crate) server_name: Option<String>,
}

impl TlsFiles {
    /// Reads the files into tonic's TLS settings.
    pub(crate) fn load(&self) -> Result<ClientTlsConfig, Error> {
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| Error::InvalidConfig(format!("cannot read {}: {e}", path.display())))
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }

    /// The files whose change triggers a reload.
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.ca.clone()];
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        paths
    }
}

/// Connection settings of every replica's endpoint.
#[derive(Debug, Clone)]
pub(crate) struct EndpointSettings {
    /// Limit on TCP (and TLS) connection set-up; also the health probe's limit.
    pub(crate) connect_timeout: Duration,
    /// HTTP/2 PING interval, to notice a dead peer on an idle-looking connection.
    pub(crate) keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is dropped.
    pub(crate) keepalive_timeout: Duration,
    /// Small requests: no Nagle delay.
    pub(crate) tcp_nodelay: bool,
}

impl EndpointSettings {
    /// The endpoint of `member` with these settings and `tls`.
    pub(crate) fn endpoint(
        &self,
        member: &Member,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::from(member.uri.clone())
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(self.tcp_nodelay)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout);
        match tls {
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::InvalidConfig(format!("TLS settings: {e}"))),
            None => Ok(endpoint),
        }
    }
}

/// A file whose content is re-read when it changes (by modification time and length).
#[derive(Debug)]
struct Watched {
    /// The files.
    paths: Vec<PathBuf>,
    /// Their (mtime, length) when last read successfully.
    seen: Vec<Option<(SystemTime, u64)>>,
}

impl Watched {
    fn new(paths: Vec<PathBuf>) -> Watched {
        let seen = paths.iter().map(stamp).collect();
        Watched { paths, seen }
    }

    /// Whether any file differs from when it was last read.
    fn changed(&self) -> Option<Vec<Option<(SystemTime, u64)>>> {
        let now: Vec<_> = self.paths.iter().map(stamp).collect();
        (now != self.seen).then_some(now)
    }
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads a bearer token file into the `authorization` value.
pub(crate) fn read_token(path: &PathBuf) -> Result<MetadataValue<Ascii>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidConfig(format!("cannot read {}: {e}", path.display())))?;
    bearer(text.trim())
}

/// `Bearer <token>` as a header value (the error never shows the token).
pub(crate) fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Error> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::InvalidConfig("a token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The state of the background task.
#[derive(Debug)]
pub(crate) struct Discovery {
    /// Where the replicas are.
    pub(crate) source: Source,
    /// Settings of every endpoint.
    pub(crate) settings: EndpointSettings,
    /// The TLS files, and the settings last read from them.
    pub(crate) tls: Option<(TlsFiles, ClientTlsConfig)>,
    /// The admin token's file and where its value is published.
    pub(crate) token_file: Option<(PathBuf, Arc<ArcSwapOption<MetadataValue<Ascii>>>)>,
    /// Changes to the balanced channel.
    pub(crate) changes: mpsc::Sender<Change<Key, Endpoint>>,
    /// What the balanced channel holds: address → (generation, member).
    pub(crate) inserted: HashMap<String, (u64, Member)>,
    /// The current settings generation.
    pub(crate) generation: u64,
    /// How often DNS is resolved and replicas probed.
    pub(crate) resolve_every: Duration,
    /// How often the TLS and token files are checked for changes.
    pub(crate) reload_every: Duration,
}

impl Discovery {
    /// Puts `members` in the balanced channel at once (static lists: no network needed).
    pub(crate) fn insert_now(&mut self, members: &[Member]) -> Result<(), Error> {
        for member in members {
            let endpoint = self
                .settings
                .endpoint(member, self.tls.as_ref().map(|(_, t)| t))?;
            let key = (member.addr.clone(), self.generation);
            // The channel has room for every member of a fresh handle.
            self.changes
                .try_send(Change::Insert(key, endpoint))
                .map_err(|_| Error::InvalidConfig("too many endpoints".into()))?;
            self.inserted
                .insert(member.addr.clone(), (self.generation, member.clone()));
        }
        Ok(())
    }

    /// Runs until every clone of the handle is gone. `probes` asks for a health round now
    /// (after a connect error) and is answered when it is done.
    pub(crate) async fn run(mut self, mut probes: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut resolve = tokio::time::interval(self.resolve_every);
        resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reload = tokio::time::interval(self.reload_every);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watched_tls = self
            .tls
            .as_ref()
            .map(|(files, _)| Watched::new(files.paths()));
        let mut watched_token = self
            .token_file
            .as_ref()
            .map(|(path, _)| Watched::new(vec![path.clone()]));
        loop {
            tokio::select! {
                _ = resolve.tick() => self.refresh().await,
                _ = reload.tick() => {
                    if let Some(watched) = &mut watched_tls {
                        self.reload_tls(watched).await;
                    }
                    if let Some(watched) = &mut watched_token {
                        self.reload_token(watched);
                    }
                }
                ack = probes.recv() => {
                    let Some(ack) = ack else { return };
                    self.refresh().await;
                    let _ = ack.send(());
                    // Callers that asked during this round are answered by it.
                    while let Ok(ack) = probes.try_recv() {
                        let _ = ack.send(());
                    }
                }
            }
            if self.changes.is_closed() {
                return;
            }
        }
    }

    /// Resolves the members, probes them, and makes the channel hold the healthy ones (all
    /// of them when none is healthy, so calls fail fast with a transport error instead of
    /// waiting for a replica until their deadline).
    async fn refresh(&mut self) {
        let members = match &self.source {
            Source::Static(members) => members.clone(),
            Source::Dns { host, port } => match resolve(host, *port, self.tls.is_some()).await {
                Some(members) => members,
                // A failed lookup keeps what was known: DNS hiccups must not empty the set.
                None => self.inserted.values().map(|(_, m)| m.clone()).collect(),
            },
        };
        let probes = members.iter().map(|m| {
            let addr = m.addr.clone();
            let timeout = self.settings.connect_timeout;
            async move {
                matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                )
            }
        });
        let healthy = futures::future::join_all(probes).await;
        let mut wanted: Vec<Member> = members
            .iter()
            .zip(&healthy)
            .filter(|(_, ok)| **ok)
            .map(|(m, _)| m.clone())
            .collect();
        if wanted.is_empty() {
            wanted = members;
        }
        self.apply(&wanted).await;
    }

    /// Inserts the members the channel lacks and removes those not wanted.
    async fn apply(&mut self, wanted: &[Member]) {
        for member in wanted {
            if self.inserted.contains_key(&member.addr) {
                continue;
            }
            let Ok(endpoint) = self
                .settings
                .endpoint(member, self.tls.as_ref().map(|(_, t)| t))
            else {
                continue;
            };
            let key = (member.addr.clone(), self.generation);
            if self
                .changes
                .send(Change::Insert(key, endpoint))
                .await
                .is_ok()
            {
                self.inserted
                    .insert(member.addr.clone(), (self.generation, member.clone()));
            }
        }
        let gone: Vec<String> = self
            .inserted
            .keys()
            .filter(|addr| !wanted.iter().any(|m| &m.addr == *addr))
            .cloned()
            .collect();
        for addr in gone {
            if let Some((generation, _)) = self.inserted.remove(&addr) {
                let _ = self.changes.send(Change::Remove((addr, generation))).await;
            }
        }
    }

    /// On a change of the TLS files, reads them and inserts every replica again with the new
    /// settings (new connections), then removes the old entries. A file that cannot be read
    /// or parsed (mid-rotation) keeps the old settings until the next check.
    async fn reload_tls(&mut self, watched: &mut Watched) {
        let Some(now) = watched.changed() else { return };
        let Some((files, _)) = &self.tls else { return };
        let Ok(tls) = files.load() else { return };
        let generation = self.generation + 1;
        let mut fresh = Vec::new();
        for member in self.inserted.values().map(|(_, m)| m.clone()) {
            let Ok(endpoint) = self.settings.endpoint(&member, Some(&tls)) else {
                return;
            };
            fresh.push((member, endpoint));
        }
        watched.seen = now;
        let files = files.clone();
        self.tls = Some((files, tls));
        self.generation = generation;
        let old = std::mem::take(&mut self.inserted);
        for (member, endpoint) in fresh {
            let key = (member.addr.clone(), generation);
            if self
                .changes
                .send(Change::Insert(key, endpoint))
                .await
                .is_ok()
            {
                self.inserted
                    .insert(member.addr.clone(), (generation, member));
            }
        }
        for (addr, (old_generation, _)) in old {
            let _ = self
                .changes
                .send(Change::Remove((addr, old_generation)))
                .await;
        }
    }

    /// On a change of the admin token file, publishes the new token.
    fn reload_token(&mut self, watched: &mut Watched) {
        let Some(now) = watched.changed() else { return };
        let Some((path, slot)) = &self.token_file else {
            return;
        };
        if let Ok(value) = read_token(path) {
            slot.store(Some(Arc::new(value)));
            watched.seen = now;
        }
    }
}

/// The addresses of `host`, or None when the lookup fails.
async fn resolve(host: &str, port: u16, tls: bool) -> Option<Vec<Member>> {
    let addrs = tokio::net::lookup_host((host, port)).await.ok()?;
    let scheme = if tls { "https" } else { "http" };
    let mut members: Vec<Member> = addrs
        .filter_map(|addr| {
            let uri = format!("{scheme}://{addr}").parse().ok()?;
            Some(Member {
                uri,
                addr: addr.to_string(),
            })
        })
        .collect();
    members.sort_by(|a, b| a.addr.cmp(&b.addr));
    members.dedup();
    Some(members)
}
