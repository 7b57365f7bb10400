//! `portcullis-load`: load and correctness tests for Portcullis and any Envoy rate limit service.

mod admin;
mod cli;
mod connect;
mod correctness;
mod driver;
mod keyspace;
mod progress;
mod report;
mod run;
mod scenario;
mod secret;
mod stats;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = cli.validate() {
        e.exit();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // As in the server (see `runtime` in server/src/main.rs): without the LIFO slot, a
    // connection sends the requests its callers queued in one scheduling round in one write
    // rather than one write each, so the generator spends less of the shared CPU per call.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(run::Failure::Input(e)) => e.exit(),
        Err(run::Failure::Run(message)) => {
            eprintln!("portcullis-load: {message}");
            ExitCode::FAILURE
        }
    }
}
