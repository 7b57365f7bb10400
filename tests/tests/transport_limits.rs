//! The gRPC port's connection and HTTP/2 bounds, attacked as a client that ignores the
//! server's limits would: many unfinished streams on one connection, connections that say
//! nothing, idle ones, peers that never answer a PING, more connections than allowed, and a
//! server out of file descriptors. Each test fails on a server without the bound.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_client::PortcullisClient;
use portcullis_tests::harness::h2::{cancel, client_preface, open_call, settings_ack};
use portcullis_tests::harness::{PortcullisProcess, free_port, http_get, sample};
use portcullis_tests::server::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A method that exists, so an opened call reaches its handler and waits for its body there.
const CHECK: &str = "/portcullis.v1.RateLimitService/Check";

/// A memory server with `[transport]` settings `toml`, and its admin port.
async fn server(toml: &str) -> (TestServer, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, format!("[transport]\n{toml}")).unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_listen = metrics.to_string();
    let s = TestServer::start(
        Backend::Memory,
        &[
            "--config",
            path.to_str().unwrap(),
            "--metrics-listen",
            &metrics_listen,
        ],
    )
    .await;
    (s, metrics, dir)
}

/// Reads (and drops) whatever the server sends until it closes the connection; how long that
/// took, or `None` if it was still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A connection that said the HTTP/2 preface and acknowledged nothing yet.
async fn h2_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&client_preface()).await.unwrap();
    stream
}

async fn check_works(client: &PortcullisClient) {
    let mut last = None;
    // A connection the server just closed may fail one call; a working server answers the next.
    for _ in 0..3 {
        match client.check("transport", "", "", 1).await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("Check failed: {last:?}");
}

/// The resident set of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// CPU time process `pid` has used, in clock ticks (user plus system).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Before: tonic gave h2 no stream limit, and one connection holding 20,000 unfinished calls
/// took the server from 177 to 440 MB. Now hyper refuses streams past
/// `transport.max_concurrent_streams` (200), so the server stays small and serves others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_hold_unbounded_streams() {
    let mut server = PortcullisProcess::spawn(&[], &[]);
    let pid = server.child().pid();
    let client = PortcullisClient::connect(server.endpoint()).await.unwrap();
    for _ in 0..200 {
        check_works(&client).await;
    }
    let before = rss_bytes(pid);

    let attacker = h2_connection(server.addr()).await;
    let (mut reader, mut writer) = attacker.into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    writer.write_all(&settings_ack()).await.unwrap();
    let mut frames = Vec::new();
    for i in 0..20_000u32 {
        frames.extend(open_call(2 * i + 1, CHECK));
        if frames.len() > 64 * 1024 {
            // The server may end the connection first (GOAWAY): that is a bound too.
            if writer.write_all(&frames).await.is_err() {
                break;
            }
            frames.clear();
        }
    }
    let _ = writer.write_all(&frames).await;
    check_works(&client).await;
    // Let the server take in what was sent before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    check_works(&client).await;
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "20,000 unfinished streams grew the server by {} MiB",
        grown >> 20
    );
    drop(writer);
    drain.abort();
}

/// Before: plaintext connections that sent nothing were still open after 90 s. Now a
/// connection whose HTTP/2 preface is not in within `transport.silent_timeout` is closed, a
/// few bytes of preface included, and real clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed() {
    let (s, _metrics, _dir) = server("silent_timeout = \"1s\"\n").await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(s.addr).await.unwrap());
    }
    let mut partial = TcpStream::connect(s.addr).await.unwrap();
    partial.write_all(&client_preface()[..10]).await.unwrap();
    silent.push(partial);
    check_works(&s.client).await;
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(15))
                .await
                .is_some(),
            "silent connection {i} is still open"
        );
    }
    check_works(&s.client).await;
}

/// Before: nothing closed a connection with no call in flight. Now one is closed after
/// `transport.idle_timeout`, while a connection with a call in flight stays open however long
/// the call takes, and a client whose connection was closed while idle just reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let (s, _metrics, _dir) = server("idle_timeout = \"1s\"\nkeepalive_interval = \"1h\"\n").await;

    let mut idle = h2_connection(s.addr).await;
    idle.write_all(&settings_ack()).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(15))
            .await
            .is_some(),
        "an idle connection stayed open"
    );

    let mut busy = h2_connection(s.addr).await;
    busy.write_all(&settings_ack()).await.unwrap();
    busy.write_all(&open_call(1, CHECK)).await.unwrap();
    assert_eq!(
        closed_within(&mut busy, Duration::from_secs(3)).await,
        None,
        "a connection with a call in flight was closed"
    );
    busy.write_all(&cancel(1)).await.unwrap();
    assert!(
        closed_within(&mut busy, Duration::from_secs(15))
            .await
            .is_some(),
        "idle after its call, the connection stayed open"
    );

    check_works(&s.client).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    check_works(&s.client).await;
}

/// Before: no HTTP/2 keepalive, so a peer gone without a FIN held its connection (and its
/// calls) forever. Now a peer that does not answer the server's PING is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_a_ping_is_closed() {
    let (s, _metrics, _dir) = server(
        "idle_timeout = \"1h\"\nkeepalive_interval = \"500ms\"\nkeepalive_timeout = \"500ms\"\n",
    )
    .await;
    let mut dead = h2_connection(s.addr).await;
    dead.write_all(&settings_ack()).await.unwrap();
    // A call in flight, so only keepalive can close it.
    dead.write_all(&open_call(1, CHECK)).await.unwrap();
    assert!(
        closed_within(&mut dead, Duration::from_secs(15))
            .await
            .is_some(),
        "a peer that ignores PINGs stayed connected"
    );
    check_works(&s.client).await;
}

/// Before: connections were bounded only by file descriptors. Now past
/// `transport.max_connections` a new connection is closed at once and counted, and once
/// connections end new ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let (s, metrics, _dir) = server("max_connections = 10\nsilent_timeout = \"1h\"\n").await;
    // The test client holds one connection already (it connected while starting).
    check_works(&s.client).await;
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(h2_connection(s.addr).await);
    }
    let mut refused = TcpStream::connect(s.addr).await.unwrap();
    assert!(
        closed_within(&mut refused, Duration::from_secs(5))
            .await
            .is_some(),
        "the connection past the limit was kept"
    );
    let (_, page) = http_get(metrics, "/metrics").await;
    assert!(sample(&page, "portcullis_connections_refused_total", "") >= 1.0);
    // The connections held still work: the test client's is one of them.
    check_works(&s.client).await;

    drop(held);
    let mut served = false;
    for _ in 0..50 {
        let mut fresh = h2_connection(s.addr).await;
        if closed_within(&mut fresh, Duration::from_millis(300))
            .await
            .is_none()
        {
            served = true;
            break;
        }
    }
    assert!(served, "no new connection was kept after the others ended");
}

/// Before: with file descriptors exhausted the accept loop spun a full core and logged
/// nothing, and checks timed out. Now accept errors back off and are logged once per
/// incident, and the connections already open keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "[transport]\nsilent_timeout = \"1s\"\n").unwrap();
    let mut server = PortcullisProcess::spawn(&["--config", config.to_str().unwrap()], &[]);
    let pid = server.child().pid();
    let client = PortcullisClient::connect(server.endpoint())
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    check_works(&client).await;

    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_fds + 8;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed");

    // More connections than descriptors: the kernel queues them, accept fails.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ticks = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - ticks;
    let per_second = procfs_ticks_per_second();
    assert!(
        used < per_second / 2,
        "the server used {used} ticks of CPU in 2 s out of descriptors (spinning?)"
    );
    check_works(&client).await;
    let log = server.log();
    let errors = log.matches("cannot accept connections").count();
    assert_eq!(errors, 1, "accept errors logged {errors} times:\n{log}");

    // Once descriptors free up (silent connections time out) and accepts have succeeded for a
    // quiet period, the incident ends with one line.
    drop(flood);
    let mut resumed = false;
    for _ in 0..100 {
        // Each new connection is an accept that may end the incident.
        let _probe = TcpStream::connect(server.addr()).await;
        if server.log().contains("accepting connections again") {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(resumed, "accepting never resumed:\n{}", server.log());
    assert_eq!(server.log().matches("cannot accept connections").count(), 1);
    check_works(&client).await;
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn procfs_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100)
}
