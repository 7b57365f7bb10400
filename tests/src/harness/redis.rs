//! Redis for the tests: one redis-server, the shared target (`REDIS_URL` or a started server), a 3 + 3 Redis Cluster, and the minimal RESP client their readiness checks use.

use std::env;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{
    LOOPBACK, ManagedChild, PROBE_TIMEOUT, Readiness, START_ATTEMPTS, StartError, cannot_start,
    free_cluster_port, free_port, is_port_conflict, log_output_to, new_temp_dir, read_log, tail,
    wait_ready,
};

pub(super) const REDIS_SERVER: &str = "redis-server";
pub(super) const REDIS_CLI: &str = "redis-cli";
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
const REDIS_LOG: &str = "redis.log";

const CLUSTER_MASTERS: usize = 3;
const CLUSTER_REPLICAS_PER_MASTER: usize = 1;
const CLUSTER_NODE_TIMEOUT_MS: &str = "5000";
const CLUSTER_SLOTS: usize = 16_384;
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CLUSTER_CREATE_LOG: &str = "cluster-create.log";

/// One redis-server (not daemonized, no persistence, bound to 127.0.0.1, with its own temp dir),
/// killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// `None` while stopped. Declared before `dir` so the server dies before its dir is removed.
    child: Option<ManagedChild>,
    port: u16,
    /// Arguments after the harness's own, kept for `restart`.
    args: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Panics with a clear message if redis-server is missing or does not answer PING within 10 s.
    pub fn start() -> RedisServer {
        RedisServer::start_with_args(&[])
    }

    /// Like `start`, with extra redis-server arguments (e.g. `["--maxmemory", "10mb"]`).
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        let args: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        RedisServer::launch(free_port, |_| args.clone())
    }

    /// Starts a server on a port from `pick_port` with the arguments `args_for_port` gives for
    /// that port, retrying on a fresh port if another process took it first. Shared by single
    /// servers and cluster nodes.
    fn launch(pick_port: fn() -> u16, args_for_port: impl Fn(u16) -> Vec<String>) -> RedisServer {
        let mut attempt = 1;
        loop {
            let port = pick_port();
            let mut server = RedisServer {
                child: None,
                port,
                args: args_for_port(port),
                dir: new_temp_dir("redis"),
            };
            match server.run() {
                Ok(()) => return server,
                Err(StartError::PortInUse) if attempt < START_ATTEMPTS => attempt += 1,
                Err(StartError::PortInUse) => panic!(
                    "redis-server could not bind a free port in {START_ATTEMPTS} attempts (last: {port}): another process keeps taking them"
                ),
                Err(StartError::Failed(message)) => panic!("{message}"),
            }
        }
    }

    /// Spawns redis-server on `self.port` and waits until it answers PING.
    fn run(&mut self) -> Result<(), StartError> {
        let port = self.port;
        let log_path = self.dir.path().join(REDIS_LOG);
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .current_dir(self.dir.path());
        log_output_to(&mut cmd, &log_path);
        let command_line = format!("{cmd:?}");
        let child = ManagedChild::spawn(cmd)
            .unwrap_or_else(|e| cannot_start(REDIS_SERVER, &command_line, &e));
        let child = self.child.insert(child);
        let pid = child.pid();
        // Checking the pid too makes sure the answer comes from our server, not from another
        // process that grabbed the port first.
        match wait_ready(child, REDIS_READY_TIMEOUT, || {
            redis_pong(port) && redis_process_id(port) == Some(pid)
        }) {
            Readiness::Ready => Ok(()),
            Readiness::Exited(status) => {
                self.child = None;
                let log = read_log(&log_path);
                if is_port_conflict(&log) {
                    Err(StartError::PortInUse)
                } else {
                    Err(StartError::Failed(format!(
                        "{REDIS_SERVER} on port {port} exited ({status}) before answering PING\ncommand: {command_line}\nlog tail:\n{}",
                        tail(&log)
                    )))
                }
            }
            Readiness::TimedOut => {
                self.child = None;
                Err(StartError::Failed(format!(
                    "{REDIS_SERVER} on port {port} did not answer PING within {REDIS_READY_TIMEOUT:?} (machine overloaded?)\ncommand: {command_line}\nlog tail:\n{}",
                    tail(&read_log(&log_path))
                )))
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://{LOOPBACK}:{}", self.port)
    }

    /// Kills the server at once (SIGKILL, no shutdown), to simulate an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the server again on the same port with the same arguments and dir (a stopped cluster
    /// node rejoins from its nodes.conf); kills it first if it is running. Waits for PING.
    pub fn restart(&mut self) {
        self.stop();
        match self.run() {
            Ok(()) => {}
            Err(StartError::PortInUse) => panic!(
                "cannot restart {REDIS_SERVER}: port {} was taken by another process while it was down",
                self.port
            ),
            Err(StartError::Failed(message)) => panic!("{message}"),
        }
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT args...` and returns its stdout without the trailing
    /// newline (so `cli(&["GET", "k"])` is just the value). redis-cli's errors go to stdout too
    /// (`ERR ...`); against a stopped server the result is empty.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut cmd = Command::new(REDIS_CLI);
        cmd.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| cannot_start(REDIS_CLI, &format!("{cmd:?}"), &e));
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }

    fn log(&self) -> String {
        read_log(&self.dir.path().join(REDIS_LOG))
    }
}

/// Where single-node tests get Redis: the server at `REDIS_URL` when that is set (used as-is and
/// never flushed, so tests must use unique keys), else a fresh [`RedisServer`] that lives as long
/// as this value.
#[derive(Debug)]
pub enum RedisTarget {
    External(String),
    Owned(RedisServer),
}

impl RedisTarget {
    pub fn from_env_or_start() -> RedisTarget {
        RedisTarget::from_url_or_start(env::var("REDIS_URL").ok())
    }

    /// An empty URL counts as unset, so `REDIS_URL= cargo test` also starts a server.
    fn from_url_or_start(url: Option<String>) -> RedisTarget {
        match url {
            Some(url) if !url.trim().is_empty() => RedisTarget::External(url),
            _ => RedisTarget::Owned(RedisServer::start()),
        }
    }

    pub fn url(&self) -> String {
        match self {
            RedisTarget::External(url) => url.clone(),
            RedisTarget::Owned(server) => server.url(),
        }
    }
}

/// A Redis Cluster of 3 masters + 3 replicas on free loopback ports, each node a [`RedisServer`]
/// with its own dir.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Holds the output of `redis-cli --cluster create`.
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the six nodes, joins them with `redis-cli --cluster create`, and waits (up to 30 s)
    /// until every node reports `cluster_state:ok` and its `CLUSTER SLOTS` covers all 16384 slots.
    /// It also waits until every range lists a replica, which Redis does only once the replica has
    /// synced, so failover tests can kill a master at once.
    pub fn start() -> RedisCluster {
        let node_count = CLUSTER_MASTERS * (1 + CLUSTER_REPLICAS_PER_MASTER);
        let nodes = (0..node_count)
            .map(|_| RedisServer::launch(free_cluster_port, cluster_node_args))
            .collect();
        let cluster = RedisCluster {
            nodes,
            dir: new_temp_dir("redis-cluster"),
        };
        cluster.create();
        cluster.wait_until_ready();
        cluster
    }

    /// All node ports; the first three were made masters (until a failover changes that).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis://127.0.0.1:P` for every node: a client can discover the cluster from any of them,
    /// and seeds that survive a single node outage are what a client needs.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, e.g. to run `cli(&["-c", "GET", key])` on one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably: `stop`/`restart` one to test outages and failover.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    fn create(&self) {
        let log_path = self.dir.path().join(CLUSTER_CREATE_LOG);
        let mut cmd = Command::new(REDIS_CLI);
        cmd.args(["--cluster", "create"])
            .args(self.ports().iter().map(|port| format!("{LOOPBACK}:{port}")))
            .args([
                "--cluster-replicas",
                &CLUSTER_REPLICAS_PER_MASTER.to_string(),
            ])
            .arg("--cluster-yes");
        log_output_to(&mut cmd, &log_path);
        let command_line = format!("{cmd:?}");
        let mut create =
            ManagedChild::spawn(cmd).unwrap_or_else(|e| cannot_start(REDIS_CLI, &command_line, &e));
        let status = create.wait_timeout(CLUSTER_READY_TIMEOUT);
        if status.is_some_and(|status| status.success()) {
            return;
        }
        let outcome = match status {
            Some(status) => format!("failed ({status})"),
            None => format!("did not finish within {CLUSTER_READY_TIMEOUT:?}"),
        };
        panic!(
            "creating the Redis Cluster {outcome}\ncommand: {command_line}\noutput:\n{}\n{}",
            tail(&read_log(&log_path)),
            self.node_log_tails()
        );
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let problem = self.ports().into_iter().find_map(cluster_node_problem);
            let Some(problem) = problem else {
                return;
            };
            if Instant::now() >= deadline {
                panic!(
                    "Redis Cluster on ports {:?} not ready within {CLUSTER_READY_TIMEOUT:?}: {problem}\n{}",
                    self.ports(),
                    self.node_log_tails()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn node_log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- log of node {} ---\n{}", node.port, tail(&node.log())))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn cluster_node_args(port: u16) -> Vec<String> {
    [
        // Start a replica's first sync at once instead of waiting 5 s for more replicas to join it.
        "--repl-diskless-sync-delay",
        "0",
        // CLUSTER SLOTS lists a replica only once its replication offset is non-zero, which on an
        // empty master happens with the first replication ping (every 10 s by default).
        "--repl-ping-replica-period",
        "1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &format!("nodes-{port}.conf"),
        "--cluster-node-timeout",
        CLUSTER_NODE_TIMEOUT_MS,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Why the node on `port` is not ready yet, or `None` if it is.
fn cluster_node_problem(port: u16) -> Option<String> {
    let info = match resp_call(port, &["CLUSTER", "INFO"]) {
        Ok(Resp::Bulk(Some(info))) => String::from_utf8_lossy(&info).into_owned(),
        other => return Some(format!("node {port}: CLUSTER INFO returned {other:?}")),
    };
    if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
        return Some(format!(
            "node {port}: CLUSTER INFO says\n{}",
            info.trim_end()
        ));
    }
    match resp_call(port, &["CLUSTER", "SLOTS"]) {
        Ok(slots) => slot_coverage_problem(&slots).map(|problem| format!("node {port}: {problem}")),
        Err(e) => Some(format!("node {port}: CLUSTER SLOTS failed: {e}")),
    }
}

/// Checks a `CLUSTER SLOTS` reply: every slot served, every range with a master and a replica.
fn slot_coverage_problem(slots: &Resp) -> Option<String> {
    let Resp::Array(Some(ranges)) = slots else {
        return Some(format!("CLUSTER SLOTS returned {slots:?}"));
    };
    let mut covered = vec![false; CLUSTER_SLOTS];
    for range in ranges {
        let Resp::Array(Some(fields)) = range else {
            return Some(format!("malformed CLUSTER SLOTS entry {range:?}"));
        };
        let [
            Resp::Integer(start),
            Resp::Integer(end),
            _master,
            replicas @ ..,
        ] = fields.as_slice()
        else {
            return Some(format!("malformed CLUSTER SLOTS entry {range:?}"));
        };
        let (Ok(first), Ok(last)) = (usize::try_from(*start), usize::try_from(*end)) else {
            return Some(format!("CLUSTER SLOTS range {start}-{end} out of bounds"));
        };
        let Some(slots) = covered.get_mut(first..=last) else {
            return Some(format!("CLUSTER SLOTS range {start}-{end} out of bounds"));
        };
        if replicas.is_empty() {
            return Some(format!("slots {start}-{end} have no replica yet"));
        }
        slots.fill(true);
    }
    let missing = covered.iter().filter(|served| !**served).count();
    (missing > 0).then(|| format!("{missing} of {CLUSTER_SLOTS} slots are not served yet"))
}

// ---------------------------------------------------------------------------------------------
// Minimal RESP client, for readiness checks without a redis crate
// ---------------------------------------------------------------------------------------------

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// Sends one command to the redis on 127.0.0.1:`port` and reads the reply.
fn resp_call(port: u16, args: &[&str]) -> io::Result<Resp> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((LOOPBACK, port)), PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let mut request = Vec::new();
    write!(request, "*{}\r\n", args.len())?;
    for arg in args {
        write!(request, "${}\r\n{arg}\r\n", arg.len())?;
    }
    stream.write_all(&request)?;
    read_resp(&mut BufReader::new(stream))
}

fn read_resp(reader: &mut impl BufRead) -> io::Result<Resp> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let Some((kind, rest)) = line
        .strip_suffix("\r\n")
        .and_then(|line| line.split_at_checked(1))
    else {
        return Err(invalid(format!("truncated RESP line {line:?}")));
    };
    let length = || {
        rest.parse::<i64>()
            .map_err(|_| invalid(format!("bad RESP length {line:?}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Integer(length()?),
        "$" => match usize::try_from(length()?) {
            Err(_) => Resp::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Resp::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(length()?) {
            Err(_) => Resp::Array(None),
            Ok(len) => Resp::Array(Some(
                (0..len)
                    .map(|_| read_resp(reader))
                    .collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(invalid(format!("unknown RESP type in {line:?}"))),
    })
}

fn redis_pong(port: u16) -> bool {
    matches!(resp_call(port, &["PING"]), Ok(Resp::Simple(reply)) if reply == "PONG")
}

/// The `process_id` from `INFO server`.
fn redis_process_id(port: u16) -> Option<u32> {
    let Ok(Resp::Bulk(Some(info))) = resp_call(port, &["INFO", "server"]) else {
        return None;
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::harness::process::process_alive;

    #[test]
    fn redis_server_stops_and_restarts_on_the_same_port() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
        assert_eq!(redis.cli(&["PING"]), "PONG");
        assert_eq!(redis.cli(&["SET", "harness:k", "v", "EX", "100"]), "OK");
        let ttl: u32 = redis.cli(&["TTL", "harness:k"]).parse().unwrap();
        assert!((1..=100).contains(&ttl));

        redis.stop();
        assert!(!redis_pong(port));
        assert_eq!(redis.cli(&["PING"]), "");
        redis.stop();

        redis.restart();
        assert_eq!(redis.port(), port);
        assert_eq!(redis.cli(&["PING"]), "PONG");
        assert_eq!(
            redis.cli(&["GET", "harness:k"]),
            "",
            "no persistence across restarts"
        );
    }

    #[test]
    fn redis_server_dies_when_its_test_panics() {
        let pid = std::panic::catch_unwind(|| {
            let redis = RedisServer::start();
            let pid: u32 = redis_process_id(redis.port()).unwrap();
            std::panic::panic_any(pid);
        })
        .unwrap_err();
        let pid = *pid.downcast::<u32>().unwrap();
        assert!(!process_alive(pid), "redis-server {pid} outlived the panic");
    }

    #[test]
    fn redis_server_passes_extra_args_and_keeps_them_on_restart() {
        let mut redis = RedisServer::start_with_args(&["--maxmemory", "12mb"]);
        assert_eq!(
            redis.cli(&["CONFIG", "GET", "maxmemory"]),
            "maxmemory\n12582912"
        );
        redis.restart();
        assert_eq!(
            redis.cli(&["CONFIG", "GET", "maxmemory"]),
            "maxmemory\n12582912"
        );
        assert_eq!(redis.cli(&["CONFIG", "GET", "save"]), "save");
    }

    #[test]
    fn redis_target_uses_the_given_url_or_starts_a_server() {
        // The external server is only named, never contacted.
        let external = RedisTarget::from_url_or_start(Some("redis://127.0.0.1:6379/3".to_owned()));
        assert!(matches!(external, RedisTarget::External(_)));
        assert_eq!(external.url(), "redis://127.0.0.1:6379/3");
        for unset in [None, Some(" ".to_owned())] {
            let owned = RedisTarget::from_url_or_start(unset);
            let RedisTarget::Owned(server) = &owned else {
                panic!("expected a started server, got {owned:?}");
            };
            assert_eq!(owned.url(), server.url());
            assert_eq!(server.cli(&["PING"]), "PONG");
        }
    }

    #[test]
    fn redis_cluster_forms_and_serves_keys() {
        let cluster = RedisCluster::start();
        let ports = cluster.ports();
        assert_eq!(ports.len(), 6);
        assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), 6);
        assert_eq!(
            cluster.seed_urls()[0],
            format!("redis://127.0.0.1:{}", ports[0])
        );
        let node = &cluster.nodes()[0];
        let info = node.cli(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
        // Keys in different slots, so -c has to follow MOVED redirects to other masters.
        for key in ["harness:{a}", "harness:{b}", "harness:{c}", "harness:{d}"] {
            assert_eq!(node.cli(&["-c", "SET", key, key]), "OK");
            assert_eq!(cluster.nodes()[5].cli(&["-c", "GET", key]), key);
        }
    }

    fn node(port: i64) -> Resp {
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"127.0.0.1".to_vec())),
            Resp::Integer(port),
            Resp::Bulk(Some(b"id".to_vec())),
            Resp::Array(Some(Vec::new())),
        ]))
    }

    fn range(start: i64, end: i64, nodes: usize) -> Resp {
        let mut fields = vec![Resp::Integer(start), Resp::Integer(end)];
        fields.extend((0..nodes).map(|i| node(7000 + i64::try_from(i).unwrap())));
        Resp::Array(Some(fields))
    }

    #[test]
    fn slot_coverage_needs_every_slot_and_a_replica() {
        let full = |nodes| {
            Resp::Array(Some(vec![
                range(0, 5460, nodes),
                range(5461, 10922, nodes),
                range(10923, 16383, nodes),
            ]))
        };
        assert_eq!(slot_coverage_problem(&full(2)), None);
        assert!(
            slot_coverage_problem(&full(1))
                .unwrap()
                .contains("no replica")
        );
        let gap = Resp::Array(Some(vec![range(0, 5460, 2), range(10923, 16383, 2)]));
        assert!(
            slot_coverage_problem(&gap)
                .unwrap()
                .contains("5462 of 16384")
        );
        let beyond = Resp::Array(Some(vec![range(0, 16384, 2)]));
        assert!(
            slot_coverage_problem(&beyond)
                .unwrap()
                .contains("out of bounds")
        );
        assert!(slot_coverage_problem(&Resp::Error("ERR".to_owned())).is_some());
        assert!(slot_coverage_problem(&Resp::Array(Some(Vec::new()))).is_some());
    }

    #[test]
    fn resp_replies_parse() {
        let mut input: &[u8] =
            b"*5\r\n+OK\r\n-ERR no\r\n:42\r\n$5\r\nhe\r\no\r\n*2\r\n$-1\r\n*-1\r\n";
        assert_eq!(
            read_resp(&mut input).unwrap(),
            Resp::Array(Some(vec![
                Resp::Simple("OK".to_owned()),
                Resp::Error("ERR no".to_owned()),
                Resp::Integer(42),
                Resp::Bulk(Some(b"he\r\no".to_vec())),
                Resp::Array(Some(vec![Resp::Bulk(None), Resp::Array(None)])),
            ]))
        );
        assert!(read_resp(&mut &b"+OK"[..]).is_err());
        assert!(read_resp(&mut &b"$5\r\nab\r\n"[..]).is_err());
        assert!(read_resp(&mut &b"?x\r\n"[..]).is_err());
    }
}
