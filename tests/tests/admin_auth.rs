//! Failed admin authentication leaves a trace and is throttled: a flood of wrong admin tokens
//! from one peer is refused without comparing after the threshold, logged in a few lines with
//! its count (never the token), and audited as counted platform events; the right token from
//! another peer still works. Real processes on every store, clients bound to distinct loopback
//! addresses so the server sees distinct peers.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_client::pb;
use portcullis_client::pb::admin_service_client::AdminServiceClient;
use portcullis_tests::auth::{admin_request, refusal, retry_delay};
use portcullis_tests::harness::PortcullisProcess;
use portcullis_tests::server::{
    ADMIN_TOKEN, Backend, JWT_SECRET, shared_cluster_seeds, shared_redis_url,
};
use serde_json::Value;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Failures a peer may make before it is throttled (the config below).
const THRESHOLD: usize = 10;
/// Wrong-token calls of the flood.
const FLOOD: usize = 200;
/// A wrong token, which must appear in no log line.
const WRONG_TOKEN: &str = "wrong-admin-token-7f3e9a1c55";
/// The platform's audit stream.
const PLATFORM: &str = "_platform";

/// A loopback address no other test or earlier run has used (the throttle is kept in the
/// store per address), never 127.0.0.1.
fn fresh_loopback() -> IpAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = nanos.wrapping_add(NEXT.fetch_add(7919, std::sync::atomic::Ordering::Relaxed));
    let [_, a, b, c] = n.to_be_bytes();
    IpAddr::from([127, a | 0x40, b, c.max(2)])
}

/// An admin client whose connection comes from `from`.
async fn admin_from(process: &PortcullisProcess, from: IpAddr) -> AdminServiceClient<Channel> {
    let channel = Endpoint::from_shared(process.endpoint())
        .unwrap()
        .local_address(Some(from))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    AdminServiceClient::new(channel)
}

/// An admin call that needs no data: the platform's audit page, as `token` presents it.
async fn list_platform(
    client: &mut AdminServiceClient<Channel>,
    token: &str,
) -> Result<pb::ListAuditEventsResponse, tonic::Status> {
    let request = admin_request(
        pb::ListAuditEventsRequest {
            tenant_id: PLATFORM.into(),
            limit: 1000,
            after_id: String::new(),
        },
        token,
    );
    Ok(client.list_audit_events(request).await?.into_inner())
}

/// Starts a process on `backend` with the admin failure threshold of this test; logging 1 s
/// windows, so counted events and log counts come soon.
async fn start(backend: Backend, dir: &std::path::Path) -> PortcullisProcess {
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!("[auth]\nadmin_failure_limit = \"{THRESHOLD}/1h\"\naudit_count_window = \"1s\"\n"),
    )
    .unwrap();
    let mut args = vec!["--config".to_owned(), config.to_str().unwrap().to_owned()];
    match backend {
        Backend::Memory => {}
        Backend::Redis => {
            let url = tokio::task::spawn_blocking(shared_redis_url).await.unwrap();
            args.extend(["--redis-url".into(), url]);
        }
        Backend::Cluster => {
            let seeds = tokio::task::spawn_blocking(shared_cluster_seeds)
                .await
                .unwrap();
            args.extend(["--redis-cluster".into(), seeds.join(",")]);
        }
    }
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        PortcullisProcess::spawn(
            &args,
            &[
                ("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN),
                ("JWT_SECRET_KEY", JWT_SECRET),
                ("RUST_LOG", "info"),
            ],
        )
    })
    .await
    .unwrap()
}

/// The process's JSON log lines that name `peer` (as the peer, or as an audit client address).
fn lines_naming(process: &PortcullisProcess, peer: &str) -> Vec<Value> {
    process
        .log()
        .lines()
        .filter(|l| l.contains(peer))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Sums the counts of the window lines (`admin calls refused in the last window`) of `peer`.
fn logged_count(lines: &[Value], peer: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l["message"] == "admin calls refused in the last window" && l["peer"] == peer)
        .map(|l| l["count"].as_u64().unwrap())
        .sum()
}

async fn a_flood_of_wrong_admin_tokens_is_throttled_logged_and_counted(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let process = start(backend, dir.path()).await;
    let attacker = fresh_loopback();
    let operator = fresh_loopback();
    let attacker_text = attacker.to_string();
    let mut from_attacker = admin_from(&process, attacker).await;

    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..FLOOD {
        let result = list_platform(&mut from_attacker, WRONG_TOKEN).await;
        if let Err(status) = &result
            && status.code() == Code::ResourceExhausted
        {
            retry_delay(status);
        }
        answers.push(refusal(result));
    }
    // THRESHOLD failures are charged, the next is compared and finds the throttle shut; from
    // then on nothing is compared.
    let compared = THRESHOLD + 1;
    let unauthenticated = (Code::Unauthenticated, String::new());
    let throttled = (Code::ResourceExhausted, "ADMIN_AUTH_THROTTLED".to_owned());
    assert!(
        answers[..compared].iter().all(|a| *a == unauthenticated),
        "{answers:?}"
    );
    assert!(
        answers[compared..].iter().all(|a| *a == throttled),
        "{answers:?}"
    );
    // The right token from the throttled peer is not even compared.
    assert_eq!(
        refusal(list_platform(&mut from_attacker, ADMIN_TOKEN).await),
        throttled
    );
    let flood_took = started.elapsed();
    let calls = (FLOOD + 1) as u64;

    // Another peer with the right token is served, and finds the flood in the platform's audit
    // stream: every call counted, in a few events.
    let mut from_operator = admin_from(&process, operator).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let page = list_platform(&mut from_operator, ADMIN_TOKEN)
            .await
            .unwrap();
        let ours: Vec<pb::AuditEvent> = page
            .events
            .into_iter()
            .filter(|e| e.action == "admin.authenticate")
            .filter(|e| {
                e.client_ip == attacker_text || e.sample_client_ips.contains(&attacker_text)
            })
            .collect();
        if ours.iter().map(|e| e.count).sum::<u64>() >= calls {
            break ours;
        }
        assert!(
            Instant::now() < deadline,
            "the flood is not counted: {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        events.iter().any(|e| e.count > 1),
        "a counted event: {events:?}"
    );
    // Per window, each outcome (invalid_token, throttled) has its first event and its count.
    let windows = started.elapsed().as_secs() as usize + 2;
    assert!(
        events.len() <= 4 * windows && events.len() * 4 <= FLOOD,
        "{} events for {FLOOD} calls: {events:?}",
        events.len()
    );
    let outcomes: Vec<&str> = events.iter().map(|e| e.outcome.as_str()).collect();
    assert!(outcomes.contains(&"invalid_token") && outcomes.contains(&"throttled"));

    // The log: the first refusal of a window at once, then one line per window with the count;
    // never the token.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = lines_naming(&process, &attacker_text);
        if logged_count(&lines, &attacker_text) >= calls {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the log does not count the flood: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(logged_count(&lines, &attacker_text), calls);
    // One-second windows: a first line and a count line per window the flood touched, and the
    // audit lines of the events above.
    let windows = flood_took.as_secs() as usize + 2;
    let operational = lines.iter().filter(|l| l["target"] != "audit").count();
    assert!(
        operational <= 2 * windows,
        "{operational} lines over {windows} windows: {lines:?}"
    );
    assert!(operational * 4 <= FLOOD, "{lines:?}");
    assert!(!process.log().contains(WRONG_TOKEN), "the token was logged");
}

portcullis_tests::on_every_store!(a_flood_of_wrong_admin_tokens_is_throttled_logged_and_counted);
