//! Portcullis processes for the tests: the binary built once with the test binary's profile, and a server process on a free loopback port with its log.

use std::env;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{
    LOOPBACK, ManagedChild, PROBE_TIMEOUT, Readiness, START_ATTEMPTS, cannot_start, free_port,
    is_port_conflict, log_output_to, new_temp_dir, read_log, tail, wait_ready,
};

const PORTCULLIS_PACKAGE: &str = "portcullis-server";
const PORTCULLIS_BIN: &str = "portcullis";
const PORTCULLIS_READY_TIMEOUT: Duration = Duration::from_secs(30);
const PORTCULLIS_LOG: &str = "portcullis.log";
/// Configuration variables of the test process must not leak into servers a test configures explicitly.
const PORTCULLIS_ENV_PREFIX: &str = "PORTCULLIS_";

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
        Self::spawn_listening(None, args, envs)
    }

    /// [`spawn`](Self::spawn) on `addr`, e.g. to bring back a replica its clients know.
    pub fn spawn_at(addr: SocketAddr, args: &[&str], envs: &[(&str, &str)]) -> PortcullisProcess {
        Self::spawn_listening(Some(addr), args, envs)
    }

    fn spawn_listening(
        at: Option<SocketAddr>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> PortcullisProcess {
        let binary = portcullis_binary();
        let mut attempt = 1;
        loop {
            let dir = new_temp_dir("portcullis");
            let log_path = dir.path().join(PORTCULLIS_LOG);
            let addr = at.unwrap_or_else(|| SocketAddr::from((LOOPBACK, free_port())));
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
            if at.is_none() && is_port_conflict(&log) && attempt < START_ATTEMPTS {
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
pub(super) struct BuildLayout {
    pub(super) target_dir: PathBuf,
    /// The cargo profile (`dev` for the `debug` dir).
    pub(super) profile: String,
    pub(super) binary: PathBuf,
}

/// Derives the layout from the test binary's path, `<target>/<profile dir>/deps/<test binary>`
/// (the portcullis binary is then `<target>/<profile dir>/portcullis`); `None` for other shapes.
pub(super) fn build_layout(test_exe: &Path) -> Option<BuildLayout> {
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
    let layout = cargo_build(&["-p", PORTCULLIS_PACKAGE, "--bin", PORTCULLIS_BIN]);
    assert!(
        layout.binary.is_file(),
        "the build succeeded but {} does not exist; is the binary still called `{PORTCULLIS_BIN}` in package `{PORTCULLIS_PACKAGE}`?",
        layout.binary.display()
    );
    layout.binary
}

/// Runs `cargo build <what>` with the running test binary's profile and target dir (so the
/// build reuses what `cargo test` built), panicking with cargo's output if it fails; returns
/// that layout.
pub(super) fn cargo_build(what: &[&str]) -> BuildLayout {
    let exe = env::current_exe().expect("cannot find the path of the running test binary");
    let layout = build_layout(&exe).unwrap_or_else(|| {
        panic!(
            "cannot find the cargo target dir from the test binary path {}: expected <target>/<profile>/deps/<test binary>; run the tests with `cargo test`",
            exe.display()
        )
    });
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .args(what)
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
        "building failed ({})\ncommand: {cmd:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
