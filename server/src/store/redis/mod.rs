//! The Redis store, on a single node or a Redis Cluster: every atomic step is one Lua script
//! (`scripts/`), rate limiting in `ratelimit.rs`, accounts in `auth.rs`.

mod auth;
mod batch;
mod connection;
mod ratelimit;

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

pub use self::connection::{RedisConnection, RedisSecurity, RedisTarget, redact_url};
use crate::ratelimit::store::StoreError;

/// Counters, overrides and accounts in Redis, shared by every replica.
#[derive(Debug, Clone)]
pub struct RedisStore {
    /// Multiplexed (single) or cluster connection; cloned per call, sharing the socket(s).
    conn: RedisConnection,
    /// The decision script; EVALSHA with its SHA computed once, EVAL again on NOSCRIPT.
    gcra: Arc<Script>,
    /// The Cluster-only compensation script.
    refund: Arc<Script>,
    /// One step of forgetting a resource's counters (admin `ResetCounters`).
    reset: Arc<Script>,
    /// The authentication store's scripts (users, lockout, sessions, audit; see `auth.rs`).
    auth: Arc<auth::AuthScripts>,
    /// Single node: concurrent decisions share script calls. `None` on a Cluster, where a
    /// call can only hold keys of one slot.
    batcher: Option<batch::Batcher>,
}

impl RedisStore {
    /// Connects to a single node or a Cluster.
    pub async fn connect(
        target: &RedisTarget,
        security: &RedisSecurity,
        io_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let conn = RedisConnection::connect(target, security, io_timeout).await?;
        let gcra = Arc::new(Script::new(include_str!("scripts/gcra.lua")));
        let batcher =
            (!conn.is_cluster()).then(|| batch::Batcher::spawn(conn.clone(), gcra.clone()));
        Ok(Self {
            conn,
            gcra,
            refund: Arc::new(Script::new(include_str!("scripts/refund.lua"))),
            reset: Arc::new(Script::new(include_str!("scripts/reset_counters.lua"))),
            auth: Arc::new(auth::AuthScripts::new()),
            batcher,
        })
    }
}
