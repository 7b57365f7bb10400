//! The authentication core over the embedded store, driven through its public API: logins,
//! lockout, first-login password changes, refresh rotation and reuse, logout.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_server::auth::audit::CallContext;
use portcullis_server::auth::model::{LockoutSettings, UserRecord};
use portcullis_server::auth::password::{Argon2Params, PasswordHasher, PasswordPolicy, Secret};
use portcullis_server::auth::tokens::{Key, KeyRing, KeyState, ReloadingKeyRing};
use portcullis_server::auth::{
    API_SCOPE, AuthError, AuthSettings, Authenticator, LoginInput, LoginLimits, NewUser,
    PASSWORD_CHANGE_SCOPE, Tokens,
};
use portcullis_server::ratelimit::policy::Limit;
use portcullis_server::store::{AnyStore, MemoryStore};
use zeroize::Zeroizing;

/// Cheap Argon2 so tests run fast; the policy and flow are what is under test.
fn authenticator(lockout: LockoutSettings, reveal_lockout: bool) -> Authenticator<MemoryStore> {
    authenticator_with_queue(lockout, reveal_lockout, 2, Duration::from_secs(5))
}

fn authenticator_with_queue(
    lockout: LockoutSettings,
    reveal_lockout: bool,
    permits: usize,
    queue_timeout: Duration,
) -> Authenticator<MemoryStore> {
    let hasher = PasswordHasher::new(
        Argon2Params::new(1024, 1, 1).unwrap(),
        permits,
        queue_timeout,
    )
    .unwrap();
    let key = Key::hs256("k1", &[7u8; 32], KeyState::Active).unwrap();
    let keys = Arc::new(ReloadingKeyRing::fixed(KeyRing::new(vec![key]).unwrap()));
    Authenticator::new(
        MemoryStore::new(),
        hasher,
        keys,
        settings(lockout, reveal_lockout),
    )
}

fn settings(lockout: LockoutSettings, reveal_lockout: bool) -> AuthSettings {
    AuthSettings {
        issuer: "portcullis".into(),
        audience: "portcullis".into(),
        access_ttl: Duration::from_secs(1800),
        session_idle: Duration::from_secs(3600),
        session_lifetime: Duration::from_secs(86_400),
        refresh_grace: Duration::ZERO,
        lockout,
        reveal_lockout,
        default_policy: PasswordPolicy::Guide,
        tenant_policies: HashMap::new(),
        login_limits: LoginLimits {
            per_ip: Limit::new(1000, Duration::from_secs(60), 1000).unwrap(),
            per_ip_all_tenants: Limit::new(1000, Duration::from_secs(60), 1000).unwrap(),
            per_tenant: Limit::new(1000, Duration::from_secs(60), 1000).unwrap(),
            hashing_per_ip: 2,
        },
        audit_retention_days: 1,
        audit_counting: Default::default(),
        admin_failure_limit: Limit::new(10, Duration::from_secs(60), 10).unwrap(),
        subject_key: Some(Zeroizing::new([9u8; 32])),
    }
}

fn ctx() -> CallContext {
    CallContext::default()
}

const GOOD: &str = "Vq7#mLx2!pRz9w";
const OTHER: &str = "Kd4$hTy8@nBc3e";

fn secret(s: &str) -> Secret {
    Secret::new(s.to_owned())
}

async fn user(a: &Authenticator<MemoryStore>, must_change: bool) -> UserRecord {
    a.create_user(NewUser {
        tenant: "acme",
        username: "alice",
        password: &secret(GOOD),
        roles: vec!["reader".into()],
        must_change_password: must_change,
    })
    .await
    .unwrap()
}

async fn login(a: &Authenticator<MemoryStore>, password: &str) -> Result<Tokens, AuthError> {
    a.login(
        LoginInput {
            tenant: "acme",
            username: "alice",
            password: &secret(password),
            client_ip: "10.0.0.1",
        },
        &ctx(),
    )
    .await
}

#[tokio::test]
async fn login_then_verify_refresh_and_logout() {
    let a = authenticator(LockoutSettings::default(), false);
    let u = user(&a, false).await;
    let t = login(&a, GOOD).await.unwrap();
    assert!(!t.password_change_required);
    assert!(
        matches!(
            a.verify(&t.access_token, Some("acme")),
            Err(AuthError::RevocationsNotLoaded { .. })
        ),
        "no token verifies before the revocation feed was read"
    );
    a.load_revocations().await.unwrap();
    assert!(a.revocations_loaded());
    let claims = a.verify(&t.access_token, Some("acme")).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.sid.as_str()),
        (u.user_id.as_str(), t.session_id.as_str())
    );
    assert!(claims.has_scope(API_SCOPE));
    assert!(matches!(
        a.verify(&t.access_token, Some("globex")),
        Err(AuthError::InvalidToken(_))
    ));

    let r = a.refresh(&t.refresh_token, &ctx()).await.unwrap();
    assert_eq!(r.session_id, t.session_id);
    assert_ne!(
        *r.refresh_token, *t.refresh_token,
        "the refresh token rotates"
    );
    assert!(
        a.logout(Some(&r.refresh_token), None, &ctx())
            .await
            .unwrap()
    );
    a.poll_revocations().await.unwrap();
    assert!(matches!(
        a.verify(&r.access_token, None),
        Err(AuthError::SessionEnded)
    ));
    assert!(matches!(
        a.refresh(&r.refresh_token, &ctx()).await,
        Err(AuthError::SessionEnded)
    ));
}

#[tokio::test]
async fn a_reused_refresh_token_ends_the_session() {
    let a = authenticator(LockoutSettings::default(), false);
    user(&a, false).await;
    let t = login(&a, GOOD).await.unwrap();
    let r = a.refresh(&t.refresh_token, &ctx()).await.unwrap();
    assert!(matches!(
        a.refresh(&t.refresh_token, &ctx()).await,
        Err(AuthError::RefreshTokenReused)
    ));
    assert!(
        matches!(
            a.refresh(&r.refresh_token, &ctx()).await,
            Err(AuthError::SessionEnded)
        ),
        "the thief's use killed the legitimate one too"
    );
    a.poll_revocations().await.unwrap();
    assert!(matches!(
        a.verify(&r.access_token, None),
        Err(AuthError::SessionEnded)
    ));
}

#[tokio::test]
async fn unknown_user_wrong_password_and_lock_look_the_same() {
    let a = authenticator(LockoutSettings::default(), false);
    user(&a, false).await;
    let unknown = a
        .login(
            LoginInput {
                tenant: "acme",
                username: "mallory",
                password: &secret(GOOD),
                client_ip: "",
            },
            &ctx(),
        )
        .await
        .unwrap_err();
    assert!(matches!(unknown, AuthError::InvalidCredentials));
    for _ in 0..5 {
        assert!(matches!(
            login(&a, OTHER).await,
            Err(AuthError::InvalidCredentials)
        ));
    }
    // Locked now: even the right password gets the same answer.
    let locked = login(&a, GOOD).await.unwrap_err();
    assert!(matches!(locked, AuthError::InvalidCredentials));
    assert_eq!(locked.to_string(), unknown.to_string());
}

#[tokio::test]
async fn parallel_guesses_evaluate_at_most_the_lockout_limit() {
    let a = Arc::new(authenticator(LockoutSettings::default(), true));
    user(&a, false).await;
    let guesses = (0..20).map(|_| {
        let a = a.clone();
        tokio::spawn(async move { login(&a, OTHER).await })
    });
    let mut evaluated = 0;
    for g in guesses {
        match g.await.unwrap() {
            Err(AuthError::InvalidCredentials) => evaluated += 1,
            Err(AuthError::AccountLocked { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(evaluated, 5, "only five passwords were checked");
    assert!(matches!(
        login(&a, GOOD).await,
        Err(AuthError::AccountLocked {
            retry_after: Some(_)
        })
    ));
}

#[tokio::test]
async fn first_login_must_change_the_password() {
    let a = authenticator(LockoutSettings::default(), false);
    a.load_revocations().await.unwrap();
    user(&a, true).await;
    let t = login(&a, GOOD).await.unwrap();
    assert!(t.password_change_required);
    let claims = a.verify(&t.access_token, None).unwrap();
    assert_eq!(claims.scope, PASSWORD_CHANGE_SCOPE);
    let other_session = login(&a, GOOD).await.unwrap();

    let weak = a
        .change_password(&t.access_token, &secret(GOOD), &secret("short"), &ctx())
        .await;
    assert!(matches!(weak, Err(AuthError::WeakPassword { .. })));
    let same = a
        .change_password(&t.access_token, &secret(GOOD), &secret(GOOD), &ctx())
        .await;
    assert!(matches!(same, Err(AuthError::PasswordReused)));
    let wrong = a
        .change_password(&t.access_token, &secret(OTHER), &secret(OTHER), &ctx())
        .await;
    assert!(matches!(wrong, Err(AuthError::InvalidCredentials)));
    assert_eq!(
        a.change_password(&t.access_token, &secret(GOOD), &secret(OTHER), &ctx())
            .await
            .unwrap(),
        1
    );

    a.poll_revocations().await.unwrap();
    assert!(matches!(
        a.verify(&other_session.access_token, None),
        Err(AuthError::SessionEnded)
    ));
    assert!(
        a.verify(&t.access_token, None).is_ok(),
        "the caller's own session stays"
    );
    let after = login(&a, OTHER).await.unwrap();
    assert!(!after.password_change_required);
    assert_eq!(
        a.verify(&after.access_token, None).unwrap().scope,
        API_SCOPE
    );
}

#[tokio::test]
async fn usernames_are_unique_per_tenant_and_policy_applies() {
    let a = authenticator(LockoutSettings::default(), false);
    user(&a, false).await;
    let again = a
        .create_user(NewUser {
            tenant: "acme",
            username: "alice",
            password: &secret(OTHER),
            roles: vec![],
            must_change_password: true,
        })
        .await;
    assert!(matches!(again, Err(AuthError::UsernameTaken)));
    let weak = a
        .create_user(NewUser {
            tenant: "acme",
            username: "bob",
            password: &secret("Password123!"),
            roles: vec![],
            must_change_password: true,
        })
        .await;
    assert!(matches!(weak, Err(AuthError::WeakPassword { .. })));
    let bad = a
        .create_user(NewUser {
            tenant: "",
            username: "bob",
            password: &secret(OTHER),
            roles: vec![],
            must_change_password: true,
        })
        .await;
    assert!(matches!(bad, Err(AuthError::InvalidArgument { field, .. }) if field == "tenant_id"));
}

#[test]
fn debug_output_has_no_secrets() {
    let shown = format!("{:?}", settings(LockoutSettings::default(), false));
    assert!(shown.contains("<redacted>") && !shown.contains("9, 9"));
}

#[tokio::test]
async fn an_overloaded_hasher_refuses_without_counting_an_attempt() {
    let a = authenticator_with_queue(
        LockoutSettings::default(),
        true,
        1,
        Duration::from_millis(5),
    );
    user(&a, false).await;
    let busy = a.hasher().reserve().await.unwrap();
    for _ in 0..10 {
        assert!(matches!(
            login(&a, GOOD).await,
            Err(AuthError::Overloaded { .. })
        ));
    }
    drop(busy);
    assert!(
        login(&a, GOOD).await.is_ok(),
        "ten refusals under load did not lock the account"
    );
}

#[tokio::test]
async fn wrong_current_passwords_count_towards_the_lockout() {
    let a = authenticator(LockoutSettings::default(), true);
    a.load_revocations().await.unwrap();
    user(&a, false).await;
    let t = login(&a, GOOD).await.unwrap();
    for _ in 0..5 {
        let r = a
            .change_password(&t.access_token, &secret(OTHER), &secret(OTHER), &ctx())
            .await;
        assert!(matches!(r, Err(AuthError::InvalidCredentials)), "{r:?}");
    }
    let r = a
        .change_password(&t.access_token, &secret(GOOD), &secret(OTHER), &ctx())
        .await;
    assert!(matches!(r, Err(AuthError::AccountLocked { .. })), "{r:?}");
    assert!(matches!(
        login(&a, GOOD).await,
        Err(AuthError::AccountLocked { .. })
    ));
}

/// A replica without the grace window rotates to a random successor, which a replica with the
/// window cannot give again: a replay of that rotation is the reuse it would have been there,
/// and ends the session.
#[tokio::test]
async fn a_replay_of_a_rotation_made_without_the_window_is_a_reuse() {
    let store = AnyStore::Memory(Arc::new(MemoryStore::new()));
    let replica = |grace: Duration| {
        let mut s = settings(LockoutSettings::default(), false);
        s.refresh_grace = grace;
        let hasher = PasswordHasher::new(
            Argon2Params::new(1024, 1, 1).unwrap(),
            2,
            Duration::from_secs(5),
        )
        .unwrap();
        let key = Key::hs256("k1", &[7u8; 32], KeyState::Active).unwrap();
        let keys = Arc::new(ReloadingKeyRing::fixed(KeyRing::new(vec![key]).unwrap()));
        Authenticator::new(store.clone(), hasher, keys, s)
    };
    let (without, with) = (replica(Duration::ZERO), replica(Duration::from_secs(60)));
    with.create_user(NewUser {
        tenant: "acme",
        username: "alice",
        password: &secret(GOOD),
        roles: vec!["reader".into()],
        must_change_password: false,
    })
    .await
    .unwrap();
    let password = secret(GOOD);
    let input = || LoginInput {
        tenant: "acme",
        username: "alice",
        password: &password,
        client_ip: "10.0.0.1",
    };

    // Rotated with the window: a replay gets the same successor.
    let t = with.login(input(), &ctx()).await.unwrap();
    let r = with.refresh(&t.refresh_token, &ctx()).await.unwrap();
    let again = with.refresh(&t.refresh_token, &ctx()).await.unwrap();
    assert_eq!(*again.refresh_token, *r.refresh_token);

    // Rotated without it: the replay through the replica with the window ends the session.
    let t = with.login(input(), &ctx()).await.unwrap();
    let r = without.refresh(&t.refresh_token, &ctx()).await.unwrap();
    assert!(matches!(
        with.refresh(&t.refresh_token, &ctx()).await,
        Err(AuthError::RefreshTokenReused)
    ));
    assert!(matches!(
        with.refresh(&r.refresh_token, &ctx()).await,
        Err(AuthError::SessionEnded)
    ));
}
