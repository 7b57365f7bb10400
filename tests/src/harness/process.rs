//! Child processes of the harness: free loopback ports, children killed with the test process, signals, readiness polling, temp dirs and logs.

use std::collections::BTreeSet;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::redis::{REDIS_CLI, REDIS_SERVER};

pub(super) const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How often readiness checks poll.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Connect/read/write timeout for one readiness probe.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many fresh ports a start tries when another process grabs the chosen port before the server binds it.
pub(super) const START_ATTEMPTS: u32 = 3;
/// Printed with setup failures: enough of a log to see why a server died.
const LOG_TAIL_LINES: usize = 40;

/// Redis Cluster uses port + 10000 for its node-to-node bus, so a node port must leave room for it.
const CLUSTER_BUS_OFFSET: u16 = 10_000;
const MAX_CLUSTER_PORT: u16 = u16::MAX - CLUSTER_BUS_OFFSET;

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
pub(super) enum StartError {
    /// Another process took the port between picking and binding it; worth retrying on a new port.
    PortInUse,
    Failed(String),
}

#[derive(Debug)]
pub(super) enum Readiness {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// Polls `ready` until it holds, the child exits, or `timeout` passes.
pub(super) fn wait_ready(
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
pub(super) fn cannot_start(program: &str, command_line: &str, error: &io::Error) -> ! {
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

pub(super) fn is_port_conflict(log: &str) -> bool {
    log.contains("Address already in use")
}

/// Temp dir names start with this, then the pid of the test process that made them.
const TEMP_DIR_PREFIX: &str = "portcullis-harness-";

pub(super) fn new_temp_dir(kind: &str) -> TempDir {
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
pub(super) fn log_output_to(cmd: &mut Command, path: &Path) {
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
pub(super) fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

pub(super) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Alive means the pid exists and is not a zombie waiting for a reaper.
#[cfg(test)]
pub(super) fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    !matches!(state, Some(Some('Z' | 'X')))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;

    use super::*;

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
