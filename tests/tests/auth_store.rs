//! The authentication store suite: every test body runs against the memory store, a single
//! Redis and a Redis Cluster, calling the store directly.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use portcullis_server::auth::model::{
    AttemptGate, AuditEvent, EndOutcome, LockoutSettings, OpenOutcome, ReplaceOutcome,
    RotateOutcome, Session, UserRecord,
};
use portcullis_server::auth::store::{AuthStore, REVOCATIONS_BATCH, StoreError};
use portcullis_server::clock::{Clock, ManualClock};
use portcullis_server::store::redis::{RedisSecurity, RedisTarget};
use portcullis_server::store::{AnyStore, MemoryStore, RedisStore};
use portcullis_tests::server::{Backend, shared_cluster_seeds, shared_redis_url, unique};

const MINUTE: Duration = Duration::from_secs(60);

fn real_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A store of the given kind and the time it runs on: a manual clock for memory (moved by
/// [`Fixture::advance`]), real time for Redis (where `advance` sleeps).
struct Fixture {
    store: AnyStore,
    clock: Option<Arc<ManualClock>>,
}

impl Fixture {
    async fn open(backend: Backend) -> Self {
        let io = Duration::from_secs(5);
        match backend {
            Backend::Memory => {
                let clock = Arc::new(ManualClock::new(real_now_us()));
                Self {
                    store: AnyStore::Memory(Arc::new(MemoryStore::with_clock(clock.clone()))),
                    clock: Some(clock),
                }
            }
            Backend::Redis => {
                let url = tokio::task::spawn_blocking(shared_redis_url).await.unwrap();
                Self::on_redis(RedisTarget::Single(url), io).await
            }
            Backend::Cluster => {
                let seeds = tokio::task::spawn_blocking(shared_cluster_seeds)
                    .await
                    .unwrap();
                Self::on_redis(RedisTarget::Cluster(seeds), io).await
            }
        }
    }

    /// A fixture on a real Redis (which keeps its own clock).
    async fn on_redis(target: RedisTarget, io: Duration) -> Self {
        Self {
            store: AnyStore::Redis(
                RedisStore::connect(&target, &RedisSecurity::default(), io)
                    .await
                    .unwrap(),
            ),
            clock: None,
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.as_ref().map_or_else(real_now_us, |c| c.now_us())
    }

    fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }

    fn now_unix(&self) -> u64 {
        self.now_us() / 1_000_000
    }

    async fn advance(&self, d: Duration) {
        match &self.clock {
            Some(c) => c.advance_us(d.as_micros() as u64),
            None => tokio::time::sleep(d).await,
        }
    }

    /// Waits (or moves the manual clock) until just after a whole second, so second-granular
    /// expiries have a known margin.
    async fn align_to_second(&self) {
        let into = self.now_us() % 1_000_000;
        self.advance(Duration::from_micros(1_000_000 - into + 50_000))
            .await;
    }

    fn user(&self, tenant: &str, user_id: &str, username: &str) -> UserRecord {
        UserRecord {
            user_id: user_id.into(),
            tenant_id: tenant.into(),
            username: username.into(),
            password_hash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA".into(),
            roles: vec!["reader".into()],
            must_change_password: true,
            created_at_unix: self.now_unix(),
            last_login_unix: None,
        }
    }

    /// Counts one login attempt, as the service does before verifying a password.
    async fn begin(&self, tenant: &str, subject: &str, lockout: &LockoutSettings) -> AttemptGate {
        self.store
            .begin_attempt(tenant, subject, lockout, self.now_ms())
            .await
            .unwrap()
    }

    /// One failed login: the attempt is counted, then reported as failed. Returns the gate the
    /// attempt got.
    async fn fail(&self, tenant: &str, subject: &str, lockout: &LockoutSettings) -> AttemptGate {
        let gate = self.begin(tenant, subject, lockout).await;
        self.store
            .finish_attempt(tenant, subject, false, lockout, self.now_ms())
            .await
            .unwrap();
        gate
    }

    /// Opens `session` as a login would, for its user as stored (created first, named after
    /// its id, when the tenant has no such user yet); false when the session id is taken.
    async fn create_session(&self, session: &Session) -> Result<bool, StoreError> {
        let (tenant, id) = (&session.tenant_id, &session.user_id);
        let user = match self.store.get_user(tenant, id).await? {
            Some(user) => user,
            None => {
                let user = self.user(tenant, id, id);
                assert!(self.store.create_user(&user).await?);
                user
            }
        };
        match self
            .store
            .open_session(session, &user.password_hash)
            .await?
        {
            OpenOutcome::Opened => Ok(true),
            OpenOutcome::IdTaken => Ok(false),
            other => panic!("{other:?}"),
        }
    }

    fn session(&self, tenant: &str, user_id: &str, sid: &str, refresh: &str) -> Session {
        let now = self.now_unix();
        Session {
            session_id: sid.into(),
            tenant_id: tenant.into(),
            user_id: user_id.into(),
            refresh_hash: refresh.into(),
            created_at_unix: now,
            last_used_unix: now,
            idle_expires_unix: now + 3600,
            absolute_expires_unix: now + 7200,
            client_ip: "192.0.2.1".into(),
        }
    }

    fn event(&self, tenant: &str, user: Option<&str>, action: &str) -> AuditEvent {
        AuditEvent {
            id: String::new(),
            time_unix_ms: self.now_ms(),
            tenant_id: tenant.into(),
            user_id: user.map(str::to_owned),
            action: action.into(),
            outcome: "success".into(),
            client_ip: "192.0.2.1".into(),
            username_hash: "kh".into(),
            trace_id: "trace".into(),
            latency_ms: 1,
            count: 1,
            sample_client_ips: Vec::new(),
        }
    }

    /// The feed's current end, skipping what earlier tests published.
    async fn feed_end(&self) -> String {
        let mut cursor: Option<String> = None;
        loop {
            let (batch, next) = self
                .store
                .revocations_since(cursor.as_deref())
                .await
                .unwrap();
            cursor = Some(next);
            if batch.len() < REVOCATIONS_BATCH {
                return cursor.unwrap();
            }
        }
    }

    /// Session ids of `tenant` revoked after `cursor`, in feed order, and the new cursor.
    async fn revoked_since(&self, tenant: &str, cursor: &str) -> (Vec<String>, String) {
        let (batch, next) = self.store.revocations_since(Some(cursor)).await.unwrap();
        let mine = batch
            .into_iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, s)| s)
            .collect();
        (mine, next)
    }
}

fn settings(max_failures: u32, lock_for: Option<Duration>) -> LockoutSettings {
    LockoutSettings {
        max_failures,
        window: 15 * MINUTE,
        lock_for,
    }
}

async fn usernames_are_unique_under_concurrency(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("uniq");
    let calls = (0..20).map(|i| {
        let user = f.user(&tenant, &format!("u{i}"), "alice");
        let store = f.store.clone();
        async move { store.create_user(&user).await.unwrap() }
    });
    let wins = join_all(calls).await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1, "exactly one creation of a username wins");
    // The same username in another tenant is a different user.
    let other = unique("uniq-other");
    assert!(
        f.store
            .create_user(&f.user(&other, "u0", "alice"))
            .await
            .unwrap()
    );
    // Reusing a user id under another username is an error, not a silent overwrite.
    let winner = f.store.find_user(&tenant, "alice").await.unwrap().unwrap();
    let e = f
        .store
        .create_user(&f.user(&tenant, &winner.user_id, "bob"))
        .await
        .unwrap_err();
    assert!(!e.transient);
}

async fn users_find_get_update_delete(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("users");
    let mut alice = f.user(&tenant, "u-1", "alice");
    assert!(f.store.create_user(&alice).await.unwrap());
    assert_eq!(
        f.store.get_user(&tenant, "u-1").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        f.store.find_user(&tenant, "alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(f.store.find_user(&tenant, "Alice").await.unwrap(), None);

    // A write presents the version it read; one that another write overtook changes nothing.
    let read = f
        .store
        .get_user_versioned(&tenant, "u-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.user, alice);
    alice.roles.push("admin".into());
    alice.must_change_password = false;
    alice.last_login_unix = Some(f.now_unix());
    assert_eq!(
        f.store.replace_user(&read.version, &alice).await.unwrap(),
        ReplaceOutcome::Replaced
    );
    assert_eq!(
        f.store.find_user(&tenant, "alice").await.unwrap(),
        Some(alice.clone())
    );
    let mut stale = read.user.clone();
    stale.password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$b2xk".into();
    assert_eq!(
        f.store.replace_user(&read.version, &stale).await.unwrap(),
        ReplaceOutcome::Changed,
        "a write based on the overtaken read is refused"
    );
    assert_eq!(
        f.store.get_user(&tenant, "u-1").await.unwrap(),
        Some(alice.clone()),
        "and wrote nothing"
    );
    let current = f
        .store
        .get_user_versioned(&tenant, "u-1")
        .await
        .unwrap()
        .unwrap();
    let mut renamed = alice.clone();
    renamed.username = "mallory".into();
    assert!(
        f.store
            .replace_user(&current.version, &renamed)
            .await
            .is_err()
    );
    assert_eq!(
        f.store
            .replace_user(&current.version, &f.user(&tenant, "u-404", "nobody"))
            .await
            .unwrap(),
        ReplaceOutcome::Gone
    );

    // Sessions open only for the user as it is: not for another password hash, not for a
    // user that does not exist.
    let s1 = f.session(&tenant, "u-1", "s-1", "h1");
    let s2 = f.session(&tenant, "u-1", "s-2", "h2");
    assert_eq!(
        f.store.open_session(&s1, "another hash").await.unwrap(),
        OpenOutcome::PasswordChanged
    );
    assert_eq!(
        f.store
            .open_session(
                &f.session(&tenant, "u-404", "s-x", "hx"),
                &alice.password_hash
            )
            .await
            .unwrap(),
        OpenOutcome::UserGone
    );
    assert_eq!(f.store.get_session(&tenant, "s-1").await.unwrap(), None);
    assert_eq!(f.store.get_session(&tenant, "s-x").await.unwrap(), None);

    // Sessions and lockout state go with the user.
    assert_eq!(
        f.store
            .open_session(&s1, &alice.password_hash)
            .await
            .unwrap(),
        OpenOutcome::Opened
    );
    assert_eq!(
        f.store
            .open_session(&s2, &alice.password_hash)
            .await
            .unwrap(),
        OpenOutcome::Opened
    );
    let lockout = settings(5, Some(MINUTE));
    for _ in 0..2 {
        f.fail(&tenant, "subj-alice", &lockout).await;
    }
    assert_eq!(
        f.store
            .lock_state(&tenant, "subj-alice", f.now_ms())
            .await
            .unwrap()
            .failures,
        2
    );
    let cursor = f.feed_end().await;

    assert!(
        f.store
            .delete_user(&tenant, "u-1", "subj-alice")
            .await
            .unwrap()
    );
    assert_eq!(f.store.get_user(&tenant, "u-1").await.unwrap(), None);
    assert_eq!(f.store.find_user(&tenant, "alice").await.unwrap(), None);
    assert_eq!(f.store.get_session(&tenant, "s-1").await.unwrap(), None);
    assert_eq!(f.store.get_session(&tenant, "s-2").await.unwrap(), None);
    assert!(
        f.store
            .list_sessions(&tenant, "u-1")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.store
            .lock_state(&tenant, "subj-alice", f.now_ms())
            .await
            .unwrap()
            .failures,
        0
    );
    let (mut revoked, _) = f.revoked_since(&tenant, &cursor).await;
    revoked.sort();
    assert_eq!(revoked, ["s-1", "s-2"], "erased sessions are revoked");
    assert!(
        !f.store
            .delete_user(&tenant, "u-1", "subj-alice")
            .await
            .unwrap()
    );
    // The username is free again.
    assert!(
        f.store
            .create_user(&f.user(&tenant, "u-2", "alice"))
            .await
            .unwrap()
    );
}

async fn parallel_attempts_evaluate_at_most_max_failures(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("burst");
    let lockout = settings(5, Some(MINUTE));
    let now = f.now_ms();
    let calls = (0..20).map(|_| {
        let store = f.store.clone();
        let t = tenant.clone();
        async move {
            store
                .begin_attempt(&t, "subj", &lockout, now)
                .await
                .unwrap()
        }
    });
    let gates = join_all(calls).await;
    let proceeded = gates.iter().filter(|g| **g == AttemptGate::Proceed).count();
    assert_eq!(proceeded, 5, "{gates:?}");
    for g in gates.iter().filter(|g| **g != AttemptGate::Proceed) {
        assert_eq!(
            *g,
            AttemptGate::Locked {
                retry_after: Some(MINUTE)
            }
        );
    }
    let mut locked_by = Vec::new();
    for _ in 0..5 {
        locked_by.push(
            f.store
                .finish_attempt(&tenant, "subj", false, &lockout, f.now_ms())
                .await
                .unwrap(),
        );
    }
    // All 20 attempts were counted, so the first failure reported sets the lock; exactly one
    // call reports having set it.
    assert_eq!(locked_by, [true, false, false, false, false]);
    let state = f
        .store
        .lock_state(&tenant, "subj", f.now_ms())
        .await
        .unwrap();
    assert!(state.locked, "{state:?}");
    // Another subject of the same tenant is untouched.
    assert_eq!(
        f.begin(&tenant, "other", &lockout).await,
        AttemptGate::Proceed
    );
}

async fn failures_lock_success_and_unlock_clear(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("lock");
    let lockout = settings(5, Some(MINUTE));
    let fail = |subject: &'static str| {
        let f = &f;
        let tenant = tenant.clone();
        async move {
            assert_eq!(
                f.fail(&tenant, subject, &lockout).await,
                AttemptGate::Proceed
            );
        }
    };
    // Four failures, then a success: the count starts again.
    for _ in 0..4 {
        fail("s").await;
    }
    assert_eq!(
        f.store
            .lock_state(&tenant, "s", f.now_ms())
            .await
            .unwrap()
            .failures,
        4
    );
    assert_eq!(f.begin(&tenant, "s", &lockout).await, AttemptGate::Proceed);
    f.store
        .finish_attempt(&tenant, "s", true, &lockout, f.now_ms())
        .await
        .unwrap();
    let state = f.store.lock_state(&tenant, "s", f.now_ms()).await.unwrap();
    assert_eq!((state.failures, state.locked), (0, false));

    // Five failures lock for lock_for.
    for _ in 0..5 {
        fail("s").await;
    }
    let before = f.now_ms();
    let AttemptGate::Locked {
        retry_after: Some(retry),
    } = f
        .store
        .begin_attempt(&tenant, "s", &lockout, f.now_ms())
        .await
        .unwrap()
    else {
        panic!("five failures must lock");
    };
    assert!(
        retry <= MINUTE && retry > MINUTE - Duration::from_secs(5),
        "{retry:?}"
    );
    let state = f.store.lock_state(&tenant, "s", f.now_ms()).await.unwrap();
    assert!(state.locked);
    let until = state.locked_until_unix_ms.unwrap();
    assert!(
        until > before + 55_000 && until <= before + 61_000,
        "{until} vs {before}"
    );

    // An admin unlock clears it.
    assert!(f.store.unlock(&tenant, "s").await.unwrap());
    let state = f.store.lock_state(&tenant, "s", f.now_ms()).await.unwrap();
    assert_eq!((state.failures, state.locked), (0, false));
    fail("s").await;

    // A timed lock ends by itself (memory: manual clock; Redis: a short lock).
    let short = settings(2, Some(Duration::from_millis(1500)));
    for _ in 0..2 {
        f.fail(&tenant, "t", &short).await;
    }
    assert!(matches!(
        f.begin(&tenant, "t", &short).await,
        AttemptGate::Locked { .. }
    ));
    f.advance(Duration::from_millis(1700)).await;
    assert_eq!(
        f.begin(&tenant, "t", &short).await,
        AttemptGate::Proceed,
        "the lock and its count ended"
    );
}

async fn indefinite_lock_lasts_until_unlock(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("forever");
    let lockout = settings(3, None);
    for _ in 0..3 {
        f.fail(&tenant, "s", &lockout).await;
    }
    assert_eq!(
        f.begin(&tenant, "s", &lockout).await,
        AttemptGate::Locked { retry_after: None }
    );
    let state = f.store.lock_state(&tenant, "s", f.now_ms()).await.unwrap();
    assert!(state.locked);
    assert_eq!(state.locked_until_unix_ms, None);
    assert!(f.store.unlock(&tenant, "s").await.unwrap());
    assert_eq!(f.begin(&tenant, "s", &lockout).await, AttemptGate::Proceed);
    assert!(!f.store.unlock(&tenant, "nobody").await.unwrap());
}

async fn a_reused_refresh_secret_revokes_the_session(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("reuse");
    let s = f.session(&tenant, "u", "sid-1", "h0");
    assert!(f.create_session(&s).await.unwrap());
    assert!(!f.create_session(&s).await.unwrap(), "ids are unique");
    let cursor = f.feed_end().await;
    let idle = Duration::from_secs(600);
    let RotateOutcome::Rotated(r1) = f
        .store
        .rotate_refresh(
            &tenant,
            "sid-1",
            "h0",
            "h1",
            f.now_unix(),
            idle,
            Duration::ZERO,
        )
        .await
        .unwrap()
    else {
        panic!("the current secret rotates");
    };
    assert_eq!(r1.refresh_hash, "h1");
    assert!(r1.idle_expires_unix <= r1.absolute_expires_unix);
    assert!(matches!(
        f.store
            .rotate_refresh(
                &tenant,
                "sid-1",
                "h1",
                "h2",
                f.now_unix(),
                idle,
                Duration::ZERO
            )
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        f.store
            .rotate_refresh(
                &tenant,
                "sid-1",
                "never",
                "h9",
                f.now_unix(),
                idle,
                Duration::ZERO
            )
            .await
            .unwrap(),
        RotateOutcome::NotFound,
        "a secret that never belonged to the session changes nothing"
    );
    assert_eq!(
        f.store
            .get_session(&tenant, "sid-1")
            .await
            .unwrap()
            .unwrap()
            .refresh_hash,
        "h2"
    );
    // The first secret again: stolen. The session dies.
    assert_eq!(
        f.store
            .rotate_refresh(
                &tenant,
                "sid-1",
                "h0",
                "h3",
                f.now_unix(),
                idle,
                Duration::ZERO
            )
            .await
            .unwrap(),
        RotateOutcome::Reused
    );
    assert_eq!(f.store.get_session(&tenant, "sid-1").await.unwrap(), None);
    assert_eq!(
        f.store
            .rotate_refresh(
                &tenant,
                "sid-1",
                "h2",
                "h4",
                f.now_unix(),
                idle,
                Duration::ZERO
            )
            .await
            .unwrap(),
        RotateOutcome::NotFound
    );
    let (revoked, _) = f.revoked_since(&tenant, &cursor).await;
    assert_eq!(revoked, ["sid-1"]);
}

async fn ending_a_session_needs_one_of_its_refresh_secrets(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("end");
    let idle = Duration::from_secs(600);
    for sid in ["s-current", "s-reused"] {
        assert!(
            f.create_session(&f.session(&tenant, "u", sid, "h0"))
                .await
                .unwrap()
        );
    }
    let cursor = f.feed_end().await;

    // A secret that is none of the session's (forged from the session id alone) ends nothing
    // and publishes nothing.
    assert_eq!(
        f.store
            .end_session(&tenant, "s-current", "forged")
            .await
            .unwrap(),
        EndOutcome::WrongSecret
    );
    assert!(
        f.store
            .get_session(&tenant, "s-current")
            .await
            .unwrap()
            .is_some(),
        "the session lives on"
    );
    let (revoked, cursor) = f.revoked_since(&tenant, &cursor).await;
    assert!(revoked.is_empty(), "{revoked:?}");

    // The current secret ends it, once.
    assert_eq!(
        f.store
            .end_session(&tenant, "s-current", "h0")
            .await
            .unwrap(),
        EndOutcome::Ended
    );
    assert_eq!(
        f.store.get_session(&tenant, "s-current").await.unwrap(),
        None
    );
    assert_eq!(
        f.store
            .end_session(&tenant, "s-current", "h0")
            .await
            .unwrap(),
        EndOutcome::NotFound
    );

    // A secret already rotated away ends the session as a reuse would.
    assert!(matches!(
        f.store
            .rotate_refresh(
                &tenant,
                "s-reused",
                "h0",
                "h1",
                f.now_unix(),
                idle,
                Duration::ZERO
            )
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        f.store
            .end_session(&tenant, "s-reused", "h0")
            .await
            .unwrap(),
        EndOutcome::Reused
    );
    assert_eq!(
        f.store.get_session(&tenant, "s-reused").await.unwrap(),
        None
    );
    assert_eq!(
        f.store
            .end_session(&unique("other"), "s-reused", "h1")
            .await
            .unwrap(),
        EndOutcome::NotFound
    );
    let (revoked, _) = f.revoked_since(&tenant, &cursor).await;
    assert_eq!(revoked, ["s-current", "s-reused"]);
}

async fn concurrent_rotations_have_one_winner(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("race");
    assert!(
        f.create_session(&f.session(&tenant, "u", "s", "h0"))
            .await
            .unwrap()
    );
    let now = f.now_unix();
    let calls = (0..10).map(|i| {
        let store = f.store.clone();
        let t = tenant.clone();
        async move {
            store
                .rotate_refresh(
                    &t,
                    "s",
                    "h0",
                    &format!("new-{i}"),
                    now,
                    MINUTE,
                    Duration::ZERO,
                )
                .await
                .unwrap()
        }
    });
    let outcomes = join_all(calls).await;
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o, RotateOutcome::Rotated(_)))
        .count();
    let reused = outcomes
        .iter()
        .filter(|o| **o == RotateOutcome::Reused)
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    // The first loser presents a used secret (reuse: the session dies), the rest find nothing.
    assert_eq!(reused, 1, "{outcomes:?}");
    assert_eq!(f.store.get_session(&tenant, "s").await.unwrap(), None);
}

async fn user_sessions_are_listed_and_revoked_with_an_exception(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("revoke");
    for sid in ["a", "b", "c"] {
        assert!(
            f.create_session(&f.session(&tenant, "u1", sid, &format!("h-{sid}")))
                .await
                .unwrap()
        );
    }
    assert!(
        f.create_session(&f.session(&tenant, "u2", "d", "h-d"))
            .await
            .unwrap()
    );
    let listed: Vec<String> = f
        .store
        .list_sessions(&tenant, "u1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(listed, ["a", "b", "c"]);
    let cursor = f.feed_end().await;
    assert!(f.store.revoke_session(&tenant, "a").await.unwrap());
    assert!(!f.store.revoke_session(&tenant, "a").await.unwrap());
    assert_eq!(
        f.store
            .revoke_user_sessions(&tenant, "u1", Some("c"))
            .await
            .unwrap(),
        1
    );
    let left: Vec<String> = f
        .store
        .list_sessions(&tenant, "u1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(left, ["c"]);
    assert!(f.store.get_session(&tenant, "d").await.unwrap().is_some());

    // Each revocation appears after the cursor exactly once, and not again after the next one.
    let (revoked, next) = f.revoked_since(&tenant, &cursor).await;
    assert_eq!(revoked, ["a", "b"]);
    let (again, _) = f.revoked_since(&tenant, &next).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        f.store
            .revoke_user_sessions(&tenant, "u1", None)
            .await
            .unwrap(),
        1
    );
    let (last, _) = f.revoked_since(&tenant, &next).await;
    assert_eq!(last, ["c"]);
}

async fn sessions_expire_when_idle_and_at_their_absolute_end(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("expiry");
    f.align_to_second().await;
    let t0 = f.now_unix();
    let mut s = f.session(&tenant, "u", "s", "h0");
    s.idle_expires_unix = t0 + 3;
    s.absolute_expires_unix = t0 + 6;
    assert!(f.create_session(&s).await.unwrap());
    let mut idle_only = f.session(&tenant, "u", "idle", "i0");
    idle_only.idle_expires_unix = t0 + 3;
    idle_only.absolute_expires_unix = t0 + 6;
    assert!(f.create_session(&idle_only).await.unwrap());

    f.advance(Duration::from_secs(2)).await;
    let RotateOutcome::Rotated(r) = f
        .store
        .rotate_refresh(
            &tenant,
            "s",
            "h0",
            "h1",
            f.now_unix(),
            Duration::from_secs(3),
            Duration::ZERO,
        )
        .await
        .unwrap()
    else {
        panic!("alive at t0 + 2");
    };
    assert_eq!(r.idle_expires_unix, t0 + 5);

    f.advance(Duration::from_secs(2)).await; // t0 + 4: past the first idle expiry
    assert!(f.store.get_session(&tenant, "s").await.unwrap().is_some());
    assert_eq!(
        f.store.get_session(&tenant, "idle").await.unwrap(),
        None,
        "not refreshed: idle"
    );
    let RotateOutcome::Rotated(r) = f
        .store
        .rotate_refresh(
            &tenant,
            "s",
            "h1",
            "h2",
            f.now_unix(),
            Duration::from_secs(3),
            Duration::ZERO,
        )
        .await
        .unwrap()
    else {
        panic!("alive at t0 + 4");
    };
    assert_eq!(
        r.idle_expires_unix,
        t0 + 6,
        "never past the absolute expiry"
    );

    f.advance(Duration::from_secs(2)).await; // t0 + 6
    assert_eq!(f.store.get_session(&tenant, "s").await.unwrap(), None);
    assert_eq!(
        f.store
            .rotate_refresh(
                &tenant,
                "s",
                "h2",
                "h3",
                f.now_unix(),
                Duration::from_secs(3),
                Duration::ZERO
            )
            .await
            .unwrap(),
        RotateOutcome::NotFound
    );
    assert!(
        f.store
            .list_sessions(&tenant, "u")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn audit_is_newest_first_paged_and_trimmed(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("audit");
    let mut ids = Vec::new();
    for i in 0..5 {
        let user = if i % 2 == 0 { Some("u1") } else { Some("u2") };
        ids.push(
            f.store
                .append_audit(&f.event(&tenant, user, &format!("a{i}")), 365)
                .await
                .unwrap(),
        );
    }
    let actions = |events: &[AuditEvent]| -> Vec<String> {
        events.iter().map(|e| e.action.clone()).collect()
    };
    let page1 = f.store.list_audit(&tenant, 3, None).await.unwrap();
    assert_eq!(actions(&page1), ["a4", "a3", "a2"]);
    assert_eq!(page1[0].id, ids[4]);
    assert_eq!(page1[0].tenant_id, tenant);
    let page2 = f
        .store
        .list_audit(&tenant, 3, Some(&page1[2].id))
        .await
        .unwrap();
    assert_eq!(actions(&page2), ["a1", "a0"]);
    assert!(
        f.store
            .list_audit(&tenant, 3, Some(&page2[1].id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .list_audit(&tenant, 3, Some("not-an-id"))
            .await
            .is_err()
    );
    let mine = f.store.audit_for_user(&tenant, "u1", 10).await.unwrap();
    assert_eq!(actions(&mine), ["a4", "a2", "a0"]);
    assert_eq!(
        actions(&f.store.audit_for_user(&tenant, "u1", 2).await.unwrap()),
        ["a4", "a2"]
    );

    // Retention: an append drops what is older than the retention.
    f.advance(Duration::from_millis(30)).await;
    f.store
        .append_audit(&f.event(&tenant, None, "last"), 0)
        .await
        .unwrap();
    assert_eq!(
        actions(&f.store.list_audit(&tenant, 10, None).await.unwrap()),
        ["last"]
    );
}

async fn tenants_never_see_each_other(backend: Backend) {
    let f = Fixture::open(backend).await;
    // Ids full of the characters that structure keys.
    let a = unique("t{a}:x");
    let b = format!("{a}}}:");
    let (uid, sid) = ("u:{1}", "s}:{1");
    assert!(
        f.store
            .create_user(&f.user(&a, uid, "same:{name}"))
            .await
            .unwrap()
    );
    assert!(
        f.store
            .create_user(&f.user(&b, uid, "same:{name}"))
            .await
            .unwrap(),
        "each tenant has its own usernames"
    );
    assert!(
        f.create_session(&f.session(&a, uid, sid, "ha"))
            .await
            .unwrap()
    );
    assert_eq!(f.store.get_session(&b, sid).await.unwrap(), None);
    assert!(f.store.list_sessions(&b, uid).await.unwrap().is_empty());
    assert_eq!(
        f.store
            .rotate_refresh(&b, sid, "ha", "hb", f.now_unix(), MINUTE, Duration::ZERO)
            .await
            .unwrap(),
        RotateOutcome::NotFound
    );
    assert!(!f.store.revoke_session(&b, sid).await.unwrap());
    assert_eq!(
        f.store.revoke_user_sessions(&b, uid, None).await.unwrap(),
        0
    );
    assert!(f.store.get_session(&a, sid).await.unwrap().is_some());

    let lockout = settings(1, None);
    f.fail(&a, "subj", &lockout).await;
    assert!(
        f.store
            .lock_state(&a, "subj", f.now_ms())
            .await
            .unwrap()
            .locked
    );
    assert!(
        !f.store
            .lock_state(&b, "subj", f.now_ms())
            .await
            .unwrap()
            .locked
    );

    f.store
        .append_audit(&f.event(&a, Some(uid), "a-only"), 365)
        .await
        .unwrap();
    assert!(f.store.list_audit(&b, 10, None).await.unwrap().is_empty());
    assert!(
        f.store
            .audit_for_user(&b, uid, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Deleting B's user leaves A's alone.
    assert!(f.store.delete_user(&b, uid, "subj").await.unwrap());
    assert_eq!(
        f.store.get_user(&a, uid).await.unwrap().unwrap().tenant_id,
        a
    );
    assert!(f.store.get_session(&a, sid).await.unwrap().is_some());
    assert!(
        f.store
            .lock_state(&a, "subj", f.now_ms())
            .await
            .unwrap()
            .locked
    );
}

/// Within the grace window the hash rotated away last is a replay (nothing changes); an older
/// hash, or the last one after the window, is a reuse.
async fn the_last_rotated_hash_is_replayed_within_the_grace_window(backend: Backend) {
    let f = Fixture::open(backend).await;
    let tenant = unique("grace");
    let idle = Duration::from_secs(600);
    let grace = Duration::from_secs(1);
    assert!(
        f.create_session(&f.session(&tenant, "u", "s", "h0"))
            .await
            .unwrap()
    );
    let rotate = async |presented: &str, new: &str| {
        f.store
            .rotate_refresh(&tenant, "s", presented, new, f.now_unix(), idle, grace)
            .await
            .unwrap()
    };
    let RotateOutcome::Rotated(r1) = rotate("h0", "h1").await else {
        panic!("the current hash rotates");
    };
    let RotateOutcome::Replayed(again) = rotate("h0", "other").await else {
        panic!("the last rotated hash within the window is a replay");
    };
    assert_eq!(again, r1, "a replay changes nothing");
    assert_eq!(rotate("never", "x").await, RotateOutcome::NotFound);
    assert!(matches!(
        rotate("h1", "h2").await,
        RotateOutcome::Rotated(_)
    ));
    // h0 is now two rotations old: a reuse even within the window.
    assert_eq!(rotate("h0", "h3").await, RotateOutcome::Reused);
    assert_eq!(f.store.get_session(&tenant, "s").await.unwrap(), None);

    // The last rotated hash after the window: a reuse.
    assert!(
        f.create_session(&f.session(&tenant, "u", "s2", "k0"))
            .await
            .unwrap()
    );
    let rotate2 = async |presented: &str, new: &str, grace: Duration| {
        f.store
            .rotate_refresh(&tenant, "s2", presented, new, f.now_unix(), idle, grace)
            .await
            .unwrap()
    };
    assert!(matches!(
        rotate2("k0", "k1", grace).await,
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        rotate2("k0", "x", Duration::ZERO).await,
        RotateOutcome::Reused,
        "without a window, a reuse"
    );
    assert!(
        f.create_session(&f.session(&tenant, "u", "s3", "k0"))
            .await
            .unwrap()
    );
    let rotate3 = async |presented: &str, new: &str| {
        f.store
            .rotate_refresh(&tenant, "s3", presented, new, f.now_unix(), idle, grace)
            .await
            .unwrap()
    };
    assert!(matches!(
        rotate3("k0", "k1").await,
        RotateOutcome::Rotated(_)
    ));
    f.advance(grace + Duration::from_millis(100)).await;
    assert_eq!(rotate3("k0", "x").await, RotateOutcome::Reused);
    assert_eq!(f.store.get_session(&tenant, "s3").await.unwrap(), None);
}

portcullis_tests::on_every_store!(
    usernames_are_unique_under_concurrency,
    users_find_get_update_delete,
    parallel_attempts_evaluate_at_most_max_failures,
    failures_lock_success_and_unlock_clear,
    indefinite_lock_lasts_until_unlock,
    a_reused_refresh_secret_revokes_the_session,
    ending_a_session_needs_one_of_its_refresh_secrets,
    concurrent_rotations_have_one_winner,
    user_sessions_are_listed_and_revoked_with_an_exception,
    sessions_expire_when_idle_and_at_their_absolute_end,
    audit_is_newest_first_paged_and_trimmed,
    tenants_never_see_each_other,
    the_last_rotated_hash_is_replayed_within_the_grace_window,
);
