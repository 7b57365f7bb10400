//! Redis Cluster failover: when the master holding a tenant's slot dies, its replica takes
//! over and Portcullis follows the new slot map without a restart, deciding by the fail mode
//! (never hanging) while the cluster has no master for that slot.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use portcullis_client::PortcullisClient;
use portcullis_server::keys::check_key;
use portcullis_tests::harness::{PortcullisProcess, RedisCluster};
use portcullis_tests::server::{JWT_SECRET, unique};

/// The port of the master serving `slot`, from `CLUSTER NODES` lines
/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges…>`.
fn master_port_for(cluster_nodes: &str, slot: u16) -> u16 {
    cluster_nodes
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 8 && f[2].split(',').any(|flag| flag == "master"))
        .find(|f| {
            f[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            })
        })
        .and_then(|f| f[1].split(['@', ':']).nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no master for slot {slot} in:\n{cluster_nodes}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_follows_a_failover_without_restart() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let seeds = cluster.seed_urls().join(",");
    let server = tokio::task::spawn_blocking(move || {
        PortcullisProcess::spawn(
            &["--redis-cluster", &seeds, "--store-timeout", "200ms"],
            &[("JWT_SECRET_KEY", JWT_SECRET)],
        )
    })
    .await
    .unwrap();
    let client = PortcullisClient::connect(server.endpoint())
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let tenant = unique("failover");
    let r = client.check(&tenant, "", "", 1).await.unwrap();
    assert!(r.allowed && !r.degraded);

    let key = check_key(&tenant, "default", "");
    let slot: u16 = cluster.nodes()[0]
        .cli(&["CLUSTER", "KEYSLOT", &key])
        .parse()
        .unwrap();
    let port = master_port_for(&cluster.nodes()[0].cli(&["CLUSTER", "NODES"]), slot);
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.port() == port)
        .unwrap();
    cluster = tokio::task::spawn_blocking(move || {
        cluster.nodes_mut()[victim].stop();
        cluster
    })
    .await
    .unwrap();

    // Until the replica is promoted (cluster-node-timeout 5 s plus the election), calls on this
    // slot are decided by the fail mode; none may hang.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut degraded_answers = 0;
    loop {
        let started = Instant::now();
        let r = client.check(&tenant, "", "", 1).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a call hung for {:?}",
            started.elapsed()
        );
        if !r.degraded {
            assert!(r.allowed, "{r:?}");
            break;
        }
        degraded_answers += 1;
        assert!(!r.allowed, "fail closed while the slot has no master");
        assert!(
            Instant::now() < deadline,
            "no recovery 40 s after the master died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{degraded_answers} fail-mode answers during the failover");
    let promoted = master_port_for(
        &cluster.nodes()[(victim + 1) % 6].cli(&["CLUSTER", "NODES"]),
        slot,
    );
    assert_ne!(promoted, port, "a replica now serves the slot");
}
