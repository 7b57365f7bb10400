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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
