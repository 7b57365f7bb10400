//! The client crate's example services as real processes: built once per test process with the
//! test binary's profile, started on a free port against a given Portcullis.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;

use super::portcullis::cargo_build;
use super::process::{
    LOOPBACK, ManagedChild, PROBE_TIMEOUT, Readiness, cannot_start, free_port, log_output_to,
    new_temp_dir, read_log, tail, wait_ready,
};

const CLIENT_PACKAGE: &str = "portcullis-client";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG: &str = "example.log";

/// A running example service, killed on drop.
#[derive(Debug)]
pub struct ExampleService {
    /// The process.
    child: ManagedChild,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Holds its log.
    dir: TempDir,
}

impl ExampleService {
    /// Starts example `name` (built with `features`) on a free port, with `envs`.
    pub fn spawn(name: &str, features: &str, envs: &[(&str, &str)]) -> ExampleService {
        let binary = example_binary(name, features);
        let dir = new_temp_dir("example");
        let addr = SocketAddr::from((LOOPBACK, free_port()));
        let mut cmd = Command::new(&binary);
        cmd.env("LISTEN", addr.to_string())
            .envs(envs.iter().copied())
            .current_dir(dir.path());
        log_output_to(&mut cmd, &dir.path().join(LOG));
        let command_line = format!("{cmd:?}");
        let mut child =
            ManagedChild::spawn(cmd).unwrap_or_else(|e| cannot_start(name, &command_line, &e));
        match wait_ready(&mut child, READY_TIMEOUT, || {
            TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
        }) {
            Readiness::Ready => ExampleService { child, addr, dir },
            other => panic!(
                "example {name} did not start ({other:?}):\n{}",
                tail(&read_log(&dir.path().join(LOG)))
            ),
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join(LOG))
    }

    /// Kills it.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

/// Builds example `name` of the client crate once per test process, with the test binary's
/// profile and target dir, and returns its path.
pub fn example_binary(name: &str, features: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let layout = cargo_build(&[
        "-p",
        CLIENT_PACKAGE,
        "--example",
        name,
        "--features",
        features,
    ]);
    let path = layout
        .binary
        .parent()
        .expect("the profile dir")
        .join("examples")
        .join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    built.push((name.to_owned(), path.clone()));
    path
}
