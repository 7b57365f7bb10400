//! The key ring that follows its key-set file: file stamps, reload on change, the key gauges.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::key::{Key, KeyRingError, KeyState};
use super::key_files::{Stamp, StampingReader, stamp_of};
use super::key_set_file::load_key_set;
use super::keyring::KeyRing;
use crate::telemetry::metrics::JWT_KEYS;

/// A key ring that follows its key-set file: readers take [`current`](Self::current), a poller
/// calls [`reload_if_changed`](Self::reload_if_changed).
pub struct ReloadingKeyRing {
    ring: ArcSwap<KeyRing>,
    path: Option<PathBuf>,
    /// The files the last load read (key set and the files it names), as they were then.
    /// The lock also keeps two reloads from racing.
    seen: Mutex<Vec<Stamp>>,
}

impl fmt::Debug for ReloadingKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingKeyRing")
            .field("path", &self.path)
            .field("ring", &*self.ring.load())
            .finish()
    }
}

impl ReloadingKeyRing {
    /// Loads the key-set file at `path` (see [`KeyRing::load_file`]) and remembers it for reloads.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, KeyRingError> {
        let path = path.into();
        let mut reader = StampingReader::default();
        let ring = load_key_set(&path, &mut reader)?;
        publish_key_gauges(&ring, None);
        Ok(Self {
            ring: ArcSwap::from_pointee(ring),
            path: Some(path),
            seen: Mutex::new(reader.stamps),
        })
    }

    /// A ring that never changes (keys from the environment, or ephemeral).
    pub fn fixed(ring: impl Into<Arc<KeyRing>>) -> Self {
        let ring = ring.into();
        publish_key_gauges(&ring, None);
        Self {
            ring: ArcSwap::new(ring),
            path: None,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// The key-set file followed, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The ring in force now; cheap, lock-free.
    pub fn current(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// Reloads when the key-set file or any file it names changed (modification time, length
    /// or SHA-256 of the content). `Ok(true)`: the new ring is in force. On error the previous
    /// ring stays in force; the same broken state is reported once, then `Ok(false)` until a
    /// file changes again.
    pub fn reload_if_changed(&self) -> Result<bool, KeyRingError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let unchanged = !seen.is_empty() && seen.iter().all(|old| stamp_of(&old.path).0 == *old);
        if unchanged {
            return Ok(false);
        }
        let mut reader = StampingReader::default();
        let result = load_key_set(path, &mut reader);
        *seen = reader.stamps;
        let ring = result?;
        publish_key_gauges(&ring, Some(&self.ring.load()));
        self.ring.store(Arc::new(ring));
        Ok(true)
    }

    /// Polls every `every` (at least 10 ms) until `stop` resolves, logging reloads and failures.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: impl Future<Output = ()>) {
        if self.path.is_none() {
            return;
        }
        let this = Arc::clone(&self);
        let check = move || this.reload_if_changed();
        let report = move |outcome: Result<Result<bool, KeyRingError>, _>| match outcome {
            Ok(Ok(true)) => tracing::info!(
                path = ?self.path,
                active_kid = %self.current().active().kid(),
                "JWT key set reloaded"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(
                %error,
                "JWT key set not reloaded; the previous keys stay in force"
            ),
            Err(error) => tracing::error!(%error, "JWT key set reload task failed"),
        };
        crate::periodic::poll_blocking(every, stop, check, report).await;
    }
}

/// Publishes the keys of `ring` as 1 and those only in `previous` as 0 (the [`JWT_KEYS`] gauge).
fn publish_key_gauges(ring: &KeyRing, previous: Option<&KeyRing>) {
    let state = |k: &Key| match k.state() {
        KeyState::Active => "active",
        KeyState::VerifyOnly => "verify",
    };
    if let Some(previous) = previous {
        for key in previous.keys() {
            metrics::gauge!(JWT_KEYS, "kid" => key.kid().to_owned(),
                "algorithm" => key.algorithm().as_str(), "state" => state(key))
            .set(0.0);
        }
    }
    for key in ring.keys() {
        metrics::gauge!(JWT_KEYS, "kid" => key.kid().to_owned(),
            "algorithm" => key.algorithm().as_str(), "state" => state(key))
        .set(1.0);
    }
}
