//! Connections: `--connections` HTTP/2 channels per target, ordered for round-robin use.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// How long establishing one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections of a run.
#[derive(Debug, Clone)]
pub struct Connections {
    /// All channels, targets interleaved (t0c0, t1c0, …, t0c1, t1c1, …): taking them in turn
    /// alternates replicas first.
    pub channels: Vec<Channel>,
    /// The first channel of each target, with its URL, for admin calls.
    pub per_target: Vec<(String, Channel)>,
}

/// A target could not be reached.
#[derive(Debug)]
pub struct ConnectError {
    /// The target.
    url: String,
    /// What tonic said.
    source: tonic::transport::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot connect to --target {}: {}",
            self.url, self.source
        )?;
        // tonic's own message is just "transport error"; the cause is further down.
        let mut cause = std::error::Error::source(&self.source);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Opens `per_target` separate HTTP/2 connections to each target (each `Endpoint::connect`
/// makes its own connection; clones of a channel would share one).
pub async fn connect(targets: &[String], per_target: u32) -> Result<Connections, ConnectError> {
    let mut by_target: Vec<Vec<Channel>> = Vec::with_capacity(targets.len());
    for url in targets {
        let error = |source| ConnectError {
            url: url.clone(),
            source,
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(error)?
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT);
        let channels = futures::future::try_join_all((0..per_target).map(|_| endpoint.connect()))
            .await
            .map_err(error)?;
        by_target.push(channels);
    }
    let mut channels = Vec::with_capacity(targets.len() * per_target as usize);
    for c in 0..per_target as usize {
        channels.extend(by_target.iter().filter_map(|t| t.get(c).cloned()));
    }
    let per_target = targets
        .iter()
        .cloned()
        .zip(by_target.iter().filter_map(|cs| cs.first().cloned()))
        .collect();
    Ok(Connections {
        channels,
        per_target,
    })
}
