//! Test harness: starts redis-server (single or Cluster) and portcullis processes on free loopback ports, and stops them even when a test panics or the test process dies.

use std::collections::BTreeSet;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How often readiness checks poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Connect/read/write timeout for one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many fresh ports a start tries when another process grabs the chosen port before the server binds it.
const START_ATTEMPTS: u32 = 3;
/// Printed with setup failures: enough of a log to see why a server died.
const LOG_TAIL_LINES: usize = 40;

const REDIS_SERVER: &str = "redis-server";
const REDIS_CLI: &str = "redis-cli";
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
const REDIS_LOG: &str = "redis.log";

/// Redis Cluster uses port + 10000 for its node-to-node bus, so a node port must leave room for it.
const CLUSTER_BUS_OFFSET: u16 = 10_000;
const MAX_CLUSTER_PORT: u16 = u16::MAX - CLUSTER_BUS_OFFSET;
const CLUSTER_MASTERS: usize = 3;
const CLUSTER_REPLICAS_PER_MASTER: usize = 1;
const CLUSTER_NODE_TIMEOUT_MS: &str = "5000";
const CLUSTER_SLOTS: usize = 16_384;
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CLUSTER_CREATE_LOG: &str = "cluster-create.log";

const PORTCULLIS_PACKAGE: &str = "portcullis-server";
const PORTCULLIS_BIN: &str = "portcullis";
const PORTCULLIS_READY_TIMEOUT: Duration = Duration::from_secs(30);
const PORTCULLIS_LOG: &str = "portcullis.log";
/// Configuration variables of the test process must not leak into servers a test configures explicitly.
const PORTCULLIS_ENV_PREFIX: &str = "PORTCULLIS_";

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Every port handed out by this process. Tests in one binary run in parallel, and a port is free
/// again between "pick" and "bind"; remembering them stops two tests from being given the same one.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
const PORT_PICK_ATTEMPTS: usize = 500;

/// A free TCP port on 127.0.0.1 (bind :0, read, drop). Never returns the same port twice in one
/// process, so concurrent tests do not collide.
pub fn free_port() -> u16 {
    claim_free_port("a free port", |_| Some(Vec::new()))
}

/// A free port for a Redis Cluster node: the port itself and its cluster bus port (port + 10000)
/// are both free, and the port is at most 55535 so the bus port exists.
pub fn free_cluster_port() -> u16 {
    claim_free_port(
        "a free cluster port (<= 55535, with port + 10000 free too)",
        |port| {
            let bus = port.checked_add(CLUSTER_BUS_OFFSET)?;
            (port <= MAX_CLUSTER_PORT && can_bind(bus)).then(|| vec![bus])
        },
    )
}

/// Picks an ephemeral port not yet handed out; `companions` says which other ports must be free
/// with it (None rejects the port). Claims the port and its companions.
fn claim_free_port(what: &str, companions: impl Fn(u16) -> Option<Vec<u16>>) -> u16 {
    for _ in 0..PORT_PICK_ATTEMPTS {
        let port = TcpListener::bind((LOOPBACK, 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .unwrap_or_else(|e| {
                panic!("cannot bind a TCP socket on 127.0.0.1:0 to find a free port: {e}; is the loopback interface up?")
            });
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.contains(&port) {
            continue;
        }
        let Some(others) = companions(port) else {
            continue;
        };
        if others.iter().any(|other| handed_out.contains(other)) {
            continue;
        }
        handed_out.insert(port);
        handed_out.extend(others);
        return port;
    }
    panic!(
        "could not find {what} on 127.0.0.1 in {PORT_PICK_ATTEMPTS} tries; are nearly all ports in use? (check `ss -tan | wc -l`)"
    );
}

fn can_bind(port: u16) -> bool {
    TcpListener::bind((LOOPBACK, port)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed (SIGKILL) and reaped on Drop, and that also dies if the test
/// process dies.
///
/// The second part uses `PR_SET_PDEATHSIG`, which fires when the *thread* that forked the child
/// exits, not the process. Test threads end after each test, so every child is forked by one
/// spawner thread that lives as long as the process.
#[derive(Debug)]
pub struct ManagedChild {
    child: Child,
    /// Set once the child has been reaped; from then on its pid may belong to someone else.
    status: Option<ExitStatus>,
}

impl ManagedChild {
    /// Spawns `cmd` (with whatever stdio and environment the caller configured) from the
    /// long-lived spawner thread.
    pub fn spawn(cmd: Command) -> io::Result<ManagedChild> {
        Ok(ManagedChild {
            child: spawn_from_spawner_thread(cmd)?,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps the child. Calling it again, or after the child exited, does nothing.
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // An error here only means the child already exited; wait() reaps it either way.
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Sends SIGTERM (for graceful-shutdown tests); does nothing once the child has been reaped.
    pub fn signal_term(&self) {
        if self.status.is_none() {
            send_signal(self.pid(), libc::SIGTERM);
        }
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status.is_none() {
                self.status = self.child.try_wait().ok().flatten();
            }
            let now = Instant::now();
            if self.status.is_some() || now >= deadline {
                return self.status;
            }
            thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

struct SpawnRequest {
    cmd: Command,
    reply: Sender<io::Result<Child>>,
}

fn spawn_from_spawner_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Sender<SpawnRequest>> = OnceLock::new();
    let requests = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("harness-spawner".to_owned())
            .spawn(move || {
                // The sender lives in a static, so this loop (and the thread) never ends.
                for SpawnRequest { mut cmd, reply } in incoming {
                    kill_child_when_this_thread_dies(&mut cmd);
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the harness spawner thread");
        requests
    });
    let gone = || io::Error::other("the harness spawner thread is gone");
    let (reply, response) = mpsc::channel();
    requests
        .send(SpawnRequest { cmd, reply })
        .map_err(|_| gone())?;
    response.recv().map_err(|_| gone())?
}

/// Makes the kernel SIGKILL the child when the forking thread (the spawner thread, hence the test
/// process) dies, even by SIGKILL, when no destructor runs.
#[allow(unsafe_code)]
fn kill_child_when_this_thread_dies(cmd: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).expect("pid fits in pid_t");
    let death_signal = libc::c_ulong::try_from(libc::SIGKILL).expect("SIGKILL is positive");
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // operations are allowed. prctl(2) and getppid(2) are plain system calls, and the errors are
    // built from errno values without allocating. Nothing is borrowed from the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If the parent died before prctl took effect, the signal will never come: give up.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions. Callers only signal children they have
    // not reaped, so the pid still names that child (a zombie at worst) and cannot have been
    // reused by an unrelated process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Why a server did not come up.
enum StartError {
    /// Another process took the port between picking and binding it; worth retrying on a new port.
    PortInUse,
    Failed(String),
}

enum Readiness {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// Polls `ready` until it holds, the child exits, or `timeout` passes.
fn wait_ready(
    child: &mut ManagedChild,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Readiness {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Readiness::Ready;
        }
        if let Some(status) = child.wait_timeout(POLL_INTERVAL) {
            return Readiness::Exited(status);
        }
        if Instant::now() >= deadline {
            return Readiness::TimedOut;
        }
    }
}

/// Panics for a program that could not be started, saying how to install it when it is missing.
fn cannot_start(program: &str, command_line: &str, error: &io::Error) -> ! {
    if error.kind() == io::ErrorKind::NotFound {
        let fix = match program {
            REDIS_SERVER | REDIS_CLI => "apt-get install -y redis-server (it brings redis-cli)",
            "cargo" => "install Rust, or set CARGO to the cargo binary",
            _ => "build it first",
        };
        panic!("{program} not found (is it on PATH?): {fix}\ncommand: {command_line}");
    }
    panic!("cannot start {program}: {error}\ncommand: {command_line}");
}

fn is_port_conflict(log: &str) -> bool {
    log.contains("Address already in use")
}

/// Temp dir names start with this, then the pid of the test process that made them.
const TEMP_DIR_PREFIX: &str = "portcullis-harness-";

fn new_temp_dir(kind: &str) -> TempDir {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| remove_temp_dirs_of_dead_processes(&env::temp_dir()));
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_DIR_PREFIX}{}-{kind}-", std::process::id()))
        .tempdir()
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a temp dir for {kind} under {}: {e}; set TMPDIR to a writable directory",
                env::temp_dir().display()
            )
        })
}

/// Servers kept in a `static` (one Redis shared by all tests) are killed at exit by the parent
/// death signal, but their temp dirs are never dropped; this removes such dirs left in `tmp` by
/// test processes that no longer run.
fn remove_temp_dirs_of_dead_processes(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|name| name.strip_prefix(TEMP_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            // Best effort: a dir that cannot be removed only costs disk space.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Appends both stdout and stderr of `cmd` to the file at `path`; stdin is /dev/null.
fn log_output_to(cmd: &mut Command, path: &Path) {
    let open = || -> io::Result<(File, File)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let second = file.try_clone()?;
        Ok((file, second))
    };
    let (stdout, stderr) =
        open().unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()));
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
}

/// The file's contents, or an empty string if it cannot be read (diagnostics only).
fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Portcullis
// ---------------------------------------------------------------------------------------------

/// A `portcullis` server process listening on a free loopback port, killed when dropped.
///
/// The binary is built once per test process with the test binary's cargo profile, so tests
/// always run the current code.
#[derive(Debug)]
pub struct PortcullisProcess {
    /// Declared before `dir` so the process dies before its log dir is removed.
    child: ManagedChild,
    addr: SocketAddr,
    /// The admin HTTP port (`/metrics`, `/livez`, `/readyz`), unless the args chose one.
    metrics_addr: Option<SocketAddr>,
    dir: TempDir,
}

/// Set to a folder to keep every portcullis process's log there after the test (CI greps
/// them all for the secrets the tests use: `tests/known-secrets.txt`).
pub const KEEP_LOGS_ENV: &str = "PORTCULLIS_TEST_LOG_DIR";

impl Drop for PortcullisProcess {
    fn drop(&mut self) {
        let Some(keep) = env::var_os(KEEP_LOGS_ENV) else {
            return;
        };
        // Stopped first, so the copy holds everything the process wrote.
        self.child.kill();
        let name = format!("portcullis-{}-{}.log", std::process::id(), self.addr.port());
        let _ = fs::copy(
            self.dir.path().join(PORTCULLIS_LOG),
            Path::new(&keep).join(name),
        );
    }
}

impl PortcullisProcess {
    /// Starts `portcullis --listen 127.0.0.1:<free port> <args...>` with `envs` added to an
    /// environment without the test process's `PORTCULLIS_*` variables; stdout and stderr go to
    /// its log. Waits (up to 30 s) until the port accepts TCP connections; panics with the log
    /// tail if the process exits first.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> PortcullisProcess {
        let binary = portcullis_binary();
        let mut attempt = 1;
        loop {
            let dir = new_temp_dir("portcullis");
            let log_path = dir.path().join(PORTCULLIS_LOG);
            let addr = SocketAddr::from((LOOPBACK, free_port()));
            let mut cmd = Command::new(binary);
            cmd.arg("--listen").arg(addr.to_string());
            // Processes run side by side: each gets its own admin port, not the default 9090.
            let metrics_addr = (!args.contains(&"--metrics-listen")).then(|| {
                let metrics_addr = SocketAddr::from((LOOPBACK, free_port()));
                cmd.arg("--metrics-listen").arg(metrics_addr.to_string());
                metrics_addr
            });
            cmd.args(args).current_dir(dir.path());
            for (name, _) in env::vars_os() {
                if name.to_string_lossy().starts_with(PORTCULLIS_ENV_PREFIX) {
                    cmd.env_remove(name);
                }
            }
            cmd.envs(envs.iter().copied());
            log_output_to(&mut cmd, &log_path);
            let command_line = format!("{cmd:?}");
            let mut child = ManagedChild::spawn(cmd)
                .unwrap_or_else(|e| cannot_start(PORTCULLIS_BIN, &command_line, &e));
            let failure = match wait_ready(&mut child, PORTCULLIS_READY_TIMEOUT, || {
                TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
            }) {
                Readiness::Ready => {
                    return PortcullisProcess {
                        child,
                        addr,
                        metrics_addr,
                        dir,
                    };
                }
                Readiness::Exited(status) => {
                    format!("exited ({status}) before accepting connections on {addr}")
                }
                Readiness::TimedOut => format!(
                    "did not accept TCP connections on {addr} within {PORTCULLIS_READY_TIMEOUT:?}"
                ),
            };
            child.kill();
            let log = read_log(&log_path);
            if is_port_conflict(&log) && attempt < START_ATTEMPTS {
                attempt += 1;
                continue;
            }
            panic!(
                "portcullis {failure}\ncommand: {command_line}\nlog tail:\n{}",
                tail(&log)
            );
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin HTTP address (`/metrics`, `/livez`, `/readyz`) the harness chose.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://127.0.0.1:PORT`, for a tonic channel.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The whole log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join(PORTCULLIS_LOG))
    }

    /// The process, e.g. to `signal_term` it and `wait_timeout` for a graceful exit.
    pub fn child(&mut self) -> &mut ManagedChild {
        &mut self.child
    }
}

/// Where cargo puts the portcullis binary for the running test binary, and how to build it there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuildLayout {
    target_dir: PathBuf,
    /// The cargo profile (`dev` for the `debug` dir).
    profile: String,
    binary: PathBuf,
}

/// Derives the layout from the test binary's path, `<target>/<profile dir>/deps/<test binary>`
/// (the portcullis binary is then `<target>/<profile dir>/portcullis`); `None` for other shapes.
fn build_layout(test_exe: &Path) -> Option<BuildLayout> {
    let deps = test_exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    let profile_dir = deps.parent()?;
    let profile = match profile_dir.file_name()?.to_str()? {
        "debug" => "dev",
        other => other,
    };
    Some(BuildLayout {
        target_dir: profile_dir.parent()?.to_path_buf(),
        profile: profile.to_owned(),
        binary: profile_dir.join(PORTCULLIS_BIN),
    })
}

/// Builds the portcullis binary once per test process (later calls reuse the path); public for
/// tests that run it to exit themselves, e.g. to see it refuse a configuration.
pub fn portcullis_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_portcullis)
}

fn build_portcullis() -> PathBuf {
    let exe = env::current_exe().expect("cannot find the path of the running test binary");
    let layout = build_layout(&exe).unwrap_or_else(|| {
        panic!(
            "cannot find the cargo target dir from the test binary path {}: expected <target>/<profile>/deps/<test binary>; run the tests with `cargo test`",
            exe.display()
        )
    });
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", PORTCULLIS_PACKAGE, "--bin", PORTCULLIS_BIN])
        .args(["--profile", &layout.profile])
        .arg("--target-dir")
        .arg(&layout.target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    let output = cmd
        .output()
        .unwrap_or_else(|e| cannot_start("cargo", &format!("{cmd:?}"), &e));
    assert!(
        output.status.success(),
        "building the portcullis binary failed ({})\ncommand: {cmd:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        layout.binary.is_file(),
        "{cmd:?} succeeded but {} does not exist; is the binary still called `{PORTCULLIS_BIN}` in package `{PORTCULLIS_PACKAGE}`?",
        layout.binary.display()
    );
    layout.binary
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// Alive means the pid exists and is not a zombie waiting for a reaper.
    fn process_alive(pid: u32) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The state is the first field after the parenthesised command name.
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        !matches!(state, Some(Some('Z' | 'X')))
    }

    fn sleep_command() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        cmd
    }

    #[test]
    fn free_ports_are_distinct_and_cluster_ports_leave_room_for_the_bus() {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            assert!(seen.insert(free_port()));
            let port = free_cluster_port();
            assert!(port <= 55_535, "{port}");
            assert!(seen.insert(port));
            assert!(
                seen.insert(port + CLUSTER_BUS_OFFSET),
                "bus port of {port} reused"
            );
        }
    }

    #[test]
    fn managed_child_is_gone_after_drop() {
        let child = ManagedChild::spawn(sleep_command()).unwrap();
        let pid = child.pid();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        assert!(proc_dir.exists());
        drop(child);
        assert!(
            !proc_dir.exists(),
            "{} still exists after drop",
            proc_dir.display()
        );
    }

    #[test]
    fn managed_child_kill_is_idempotent_and_sigterm_ends_it() {
        let mut child = ManagedChild::spawn(sleep_command()).unwrap();
        assert_eq!(child.wait_timeout(Duration::from_millis(50)), None);
        child.signal_term();
        let status = child
            .wait_timeout(Duration::from_secs(5))
            .expect("sleep ignored SIGTERM");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        child.kill();
        child.kill();
        child.signal_term();
        assert_eq!(child.wait_timeout(Duration::ZERO), Some(status));
    }

    #[test]
    fn managed_child_outlives_the_thread_that_asked_for_it() {
        // PDEATHSIG would kill it if the short-lived thread had forked it.
        let child = thread::spawn(|| ManagedChild::spawn(sleep_command()).unwrap())
            .join()
            .unwrap();
        thread::sleep(Duration::from_millis(200));
        assert!(process_alive(child.pid()));
    }

    #[test]
    fn public_types_can_live_in_statics() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ManagedChild>();
        shareable::<RedisServer>();
        shareable::<RedisTarget>();
        shareable::<RedisCluster>();
        shareable::<PortcullisProcess>();
    }

    #[test]
    fn temp_dirs_of_dead_processes_are_swept() {
        let tmp = new_temp_dir("sweep-test");
        let mut child = ManagedChild::spawn(Command::new("true")).unwrap();
        child.kill();
        let dead_pid = child.pid();
        let dead = tmp
            .path()
            .join(format!("{TEMP_DIR_PREFIX}{dead_pid}-redis-abc"));
        let alive = tmp
            .path()
            .join(format!("{TEMP_DIR_PREFIX}{}-redis-abc", std::process::id()));
        let unrelated = tmp.path().join("portcullis-other-1-x");
        for dir in [&dead, &alive, &unrelated] {
            fs::create_dir_all(dir.join("sub")).unwrap();
        }
        remove_temp_dirs_of_dead_processes(tmp.path());
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = ManagedChild::spawn(Command::new("/nonexistent/harness-program")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    const ORPHAN_PID_FILE: &str = "HARNESS_ORPHAN_PID_FILE";

    /// Run by `managed_child_dies_with_the_test_process` in a separate test process: spawns a
    /// child, records its pid, and exits without running any destructor.
    #[test]
    #[ignore = "helper process for managed_child_dies_with_the_test_process"]
    fn orphan_helper() {
        let Some(pid_file) = env::var_os(ORPHAN_PID_FILE) else {
            return;
        };
        let child = ManagedChild::spawn(sleep_command()).unwrap();
        fs::write(pid_file, child.pid().to_string()).unwrap();
        std::process::exit(0);
    }

    #[test]
    fn managed_child_dies_with_the_test_process() {
        let dir = new_temp_dir("orphan-test");
        let pid_file = dir.path().join("pid");
        // libtest names tests by their module path without the crate name.
        let (_crate, module) = module_path!().split_once("::").unwrap();
        let status = Command::new(env::current_exe().unwrap())
            .arg(format!("{module}::orphan_helper"))
            .args(["--exact", "--ignored", "--test-threads=1"])
            .env(ORPHAN_PID_FILE, &pid_file)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{status}");
        let pid: u32 = fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "child {pid} survived its test process"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

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

    #[test]
    fn build_layout_follows_the_test_binary() {
        assert_eq!(
            build_layout(Path::new("/w/target/debug/deps/e2e-0123abcd")),
            Some(BuildLayout {
                target_dir: PathBuf::from("/w/target"),
                profile: "dev".to_owned(),
                binary: PathBuf::from("/w/target/debug/portcullis"),
            })
        );
        assert_eq!(
            build_layout(Path::new("/tmp/t/release/deps/portcullis_tests-1f")),
            Some(BuildLayout {
                target_dir: PathBuf::from("/tmp/t"),
                profile: "release".to_owned(),
                binary: PathBuf::from("/tmp/t/release/portcullis"),
            })
        );
        assert_eq!(
            build_layout(Path::new("/w/target/ci/deps/e2e-1")).map(|l| l.profile),
            Some("ci".to_owned())
        );
        assert_eq!(build_layout(Path::new("/w/target/debug/e2e")), None);
        assert_eq!(build_layout(Path::new("e2e")), None);
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

    #[test]
    fn port_conflicts_are_recognised_in_logs() {
        assert!(is_port_conflict(
            "# Warning: Could not create server TCP listening socket 127.0.0.1:6379: bind: Address already in use"
        ));
        assert!(is_port_conflict(
            "Error: Address already in use (os error 98)"
        ));
        assert!(!is_port_conflict("Ready to accept connections"));
    }
}
