//! One run, from validated flags to exit status: inputs, connections, test limits, load, summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::{create_login_user, install_limits, remove_limits};
use crate::cli::Cli;
use crate::connect::connect;
use crate::driver::{self, Counters, Plan, Setup, Stop};
use crate::keyspace::{KeySpace, Shape};
use crate::progress::Progress;
use crate::report::{RunInfo, Summary};
use crate::scenario::{EnvoySettings, LoginSettings, ScenarioKind, Workload};
use crate::secret::{self, Secret};

/// Exit status when over-admission was found.
pub const EXIT_OVER_ADMITTED: u8 = 3;
/// Exit status when Ctrl-C ended the run (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a run could not complete.
#[derive(Debug)]
pub enum Failure {
    /// Bad input (unreadable file, …): reported like a flag error, exit status 2.
    Input(clap::Error),
    /// The run failed (connection, admin call, output file): exit status 1.
    Run(String),
}

/// Reads a secret file given for `flag`.
fn secret_lines(flag: &str, path: Option<&std::path::Path>) -> Result<Vec<Secret>, Failure> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    secret::read_lines(path).map_err(|e| Failure::Input(Cli::input_error(format!("{flag}: {e}"))))
}

/// The first line of a secret file given for `flag`.
fn secret_one(flag: &str, path: Option<&std::path::Path>) -> Result<Option<Secret>, Failure> {
    path.map(secret::read_one)
        .transpose()
        .map_err(|e| Failure::Input(Cli::input_error(format!("{flag}: {e}"))))
}

/// Runs the load described by `cli` (already validated) and returns the exit status.
pub async fn run(cli: Cli) -> Result<u8, Failure> {
    let mix = cli.mix();
    let has = |kind| mix.contains(kind);
    let tokens = if has(ScenarioKind::Verify) {
        secret_lines("--token-file", cli.token_file.as_deref())?
    } else {
        Vec::new()
    };
    let password = if has(ScenarioKind::Login) {
        secret_one("--password-file", cli.password_file.as_deref())?
    } else {
        None
    };
    let admin_token = secret_one("--admin-token-file", cli.admin_token_file.as_deref())?;
    let keyspace = KeySpace::new(cli.tenants, cli.keys, cli.shape()).map_err(|e| {
        Failure::Input(Cli::input_error(format!(
            "--tenants/--keys/--zipf-exponent: {e}"
        )))
    })?;

    // Correctness needs counters nobody has touched: tenant names with a random run id (not
    // from --seed, which a rerun repeats).
    let prefix = if cli.verify_limit.is_some() {
        format!("lt{:08x}", rand::random::<u32>())
    } else {
        "load".to_owned()
    };
    let tenant_names: Vec<String> = (0..cli.tenants).map(|t| format!("{prefix}-t{t}")).collect();
    let key_names: Vec<String> = (0..cli.keys).map(|k| format!("k{k}")).collect();
    let seed = cli.seed.unwrap_or_else(rand::random);
    let resource = cli.resource.clone().unwrap_or_default();

    let connections = connect(&cli.targets, cli.connections)
        .await
        .map_err(|e| Failure::Run(e.to_string()))?;

    let admin = match (cli.verify_limit, &admin_token) {
        (Some(limit), Some(token)) if has(ScenarioKind::Check) => {
            install_limits(
                &connections.per_target,
                token,
                &tenant_names,
                &resource,
                &limit,
                cli.timeout.max(Duration::from_secs(2)),
            )
            .await
            .map_err(|e| Failure::Run(format!("cannot set --verify-limit: {e}")))?;
            eprintln!(
                "portcullis-load: set {limit} on {} fresh tenants ({prefix}-t0…) on every target",
                tenant_names.len()
            );
            Some(token)
        }
        _ => None,
    };

    let login = match (&cli.tenant, &cli.username, password) {
        (Some(tenant), Some(username), Some(password)) => Some(LoginSettings {
            tenant: tenant.clone(),
            username: username.clone(),
            password,
        }),
        _ => None,
    };
    if let (Some(login), Some(token)) = (&login, &admin_token) {
        create_login_user(&connections.per_target, token, login, cli.timeout)
            .await
            .map_err(|e| Failure::Run(format!("cannot create the login user: {e}")))?;
    }

    let workload = Arc::new(Workload {
        mix: mix.clone(),
        keyspace,
        tenant_names,
        key_names,
        resource: resource.clone(),
        envoy: cli.domain.clone().map(|domain| EnvoySettings {
            domain,
            descriptors: cli.descriptor_templates(),
        }),
        tokens,
        login,
        expected_policy: cli.verify_limit.filter(|_| has(ScenarioKind::Check)),
    });

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(Stop::default());
    let on_ctrl_c = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("portcullis-load: interrupted; waiting for calls in flight");
                stop.request();
            }
        })
    };
    let plan = Plan::new(Instant::now(), cli.warmup, cli.duration);
    let progress = Progress::start(Arc::clone(&counters), plan);
    let setup = Setup {
        workload: Arc::clone(&workload),
        channels: connections.channels.clone().into(),
        timeout: cli.timeout,
        seed,
        correctness: cli.verify_limit.is_some(),
        counters,
        stop: Arc::clone(&stop),
    };
    let output = driver::run(setup, cli.mode(), plan).await;
    if let Some(p) = progress {
        p.finish();
    }
    on_ctrl_c.abort();
    let output = output.map_err(|e| Failure::Run(e.to_string()))?;

    if let Some(token) = admin {
        let failed = remove_limits(
            &connections.per_target,
            token,
            &workload.tenant_names,
            &resource,
            cli.timeout.max(Duration::from_secs(2)),
        )
        .await;
        if failed > 0 {
            eprintln!("portcullis-load: {failed} test limits could not be deleted");
        }
    }

    let stopped = stop.at().filter(|&at| at < plan.end);
    let measured = stopped
        .unwrap_or(plan.end)
        .saturating_duration_since(plan.measure_from);
    let verdict = cli
        .verify_limit
        .and_then(|limit| output.recorder.ledger().map(|l| l.verdict(&limit)));
    let info = RunInfo {
        mix,
        mode: cli.mode(),
        targets: cli.targets.clone(),
        connections: cli.connections,
        tenants: cli.tenants,
        keys: cli.keys,
        distribution: match cli.shape() {
            Shape::Uniform => "uniform".to_owned(),
            Shape::Zipfian { exponent } => format!("zipfian(s={exponent})"),
        },
        seed,
        warmup: cli.warmup,
        measured,
        interrupted: stopped.is_some(),
        dropped: output.dropped,
    };
    let summary = Summary::build(
        &info,
        &output.recorder,
        verdict.as_ref(),
        (&workload.tenant_names, &workload.key_names),
    );
    print_summary(&summary.render());
    if let Some(path) = &cli.json {
        let json = summary
            .to_json()
            .map_err(|e| Failure::Run(format!("cannot encode the JSON summary: {e}")))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| Failure::Run(format!("cannot write --json {}: {e}", path.display())))?;
    }
    Ok(match (verdict, stopped) {
        (Some(v), _) if v.over_admitted > 0 => EXIT_OVER_ADMITTED,
        (_, Some(_)) => EXIT_INTERRUPTED,
        _ => 0,
    })
}

/// The summary goes to stdout (the progress line and messages go to stderr).
fn print_summary(text: &str) {
    #[allow(clippy::print_stdout)] // the summary is the program's output
    {
        print!("{text}");
    }
}
