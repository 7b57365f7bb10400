//! SIGTERM during load: calls already accepted finish, the process exits 0 within the grace
//! period, and calls that arrive afterwards are refused cleanly rather than cut off.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use portcullis_client::PortcullisClient;
use portcullis_tests::auth::AuthApi;
use portcullis_tests::harness::PortcullisProcess;
use portcullis_tests::server::{ADMIN_TOKEN, unique};

/// A password the default policy accepts.
const PASSWORD: &str = "Vq7#mLx2!pRz9w";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_then_exits_zero() {
    let mut server = tokio::task::spawn_blocking(|| {
        PortcullisProcess::spawn(
            &["--default-limit", "1000000/1s"],
            &[("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)],
        )
    })
    .await
    .unwrap();
    let api = AuthApi::connect(&server.endpoint()).await;
    api.create_user("alice", PASSWORD, &[], Some(false)).await;

    // Checks in a loop on their own connection, each noting whether it began before the
    // signal: those were accepted by a serving process and must succeed.
    let signalled = Arc::new(AtomicBool::new(false));
    let checker = {
        let client = PortcullisClient::connect(server.endpoint()).await.unwrap();
        let signalled = signalled.clone();
        tokio::spawn(async move {
            let tenant = unique("drain");
            let (mut before, mut after_ok, mut after_refused) = (0u32, 0u32, 0u32);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                let began_after = signalled.load(Ordering::SeqCst);
                match client.check(&tenant, "", "", 1).await {
                    Ok(_) if began_after => after_ok += 1,
                    Ok(_) => before += 1,
                    Err(e) if began_after => {
                        after_refused += 1;
                        let text = e.to_string();
                        assert!(
                            !text.contains("Internal") && !text.contains("DataLoss"),
                            "a refused call fails cleanly: {text}"
                        );
                        break;
                    }
                    Err(e) => panic!("a check sent before SIGTERM failed: {e}"),
                }
            }
            (before, after_ok, after_refused)
        })
    };

    // Argon2-bound logins (default cost, two permits) are in flight for hundreds of ms.
    // From six addresses: one address may have only half the permits in flight.
    let logins = (0..6).map(|i| {
        let api = api.clone();
        tokio::spawn(async move {
            api.login_from("alice", PASSWORD, &format!("198.51.100.{i}"))
                .await
        })
    });
    let logins: Vec<_> = logins.collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    signalled.store(true, Ordering::SeqCst);
    server.child().signal_term();

    for login in join_all(logins).await {
        let login = login.unwrap();
        assert!(
            login.is_ok(),
            "a login accepted before SIGTERM finished: {login:?}"
        );
    }
    let (before, after_ok, after_refused) = checker.await.unwrap();
    eprintln!(
        "checks: {before} before SIGTERM, {after_ok} answered after it, {after_refused} refused"
    );
    assert!(before > 0, "the load ran before the signal");

    let status = tokio::task::spawn_blocking(move || {
        let status = server.child().wait_timeout(Duration::from_secs(25));
        (status, server.log())
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert!(
        status.is_some_and(|s| s.success()),
        "exits 0 within the grace period: {status:?}\n{log}"
    );
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains("grace period over"),
        "calls finished well within the grace period, so it was not needed:\n{log}"
    );
}
