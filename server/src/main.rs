//! The `portcullis` binary: read config, set up logging, serve until SIGTERM or SIGINT.

use std::process::ExitCode;

use portcullis_server::config::{Config, ConfigError, DotEnv, ProcessEnv, WithDotEnv};
use portcullis_server::telemetry::logs::LogFormat;
use portcullis_server::telemetry::traces::Traces;

/// mimalloc: the request path allocates many small short-lived buffers (HTTP/2 frames, protobuf
/// messages, Redis commands), where glibc's malloc showed up as about a sixth of CPU samples.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match runtime() {
        Ok(runtime) => runtime.block_on(serve()),
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tokio's multi-threaded runtime without its LIFO slot (the build sets `tokio_unstable` in
/// `.cargo/config.toml` for this). With the slot, each stream task that finishes a response
/// wakes its connection's task into the slot, so the connection runs next and writes that one
/// response: one `writev` per response. Without it, the connection runs after the round's
/// stream tasks and writes their responses together. Measured with h2load (8 connections ×
/// 16 streams) on two cores: memory-store `Check` 122,000 → 208,000 calls/s and server CPU
/// 12 → 7.7 µs per call; Redis `Check` 94,000 → 121,000 calls/s. Test builds refuse to compile
/// without the flag.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn serve() -> ExitCode {
    // A `.env` in the working directory fills in variables the environment lacks; it is
    // refused unless only its owner can read it.
    let env = match DotEnv::load(std::path::Path::new(".env")) {
        Ok(dotenv) => WithDotEnv {
            primary: ProcessEnv,
            dotenv,
        },
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(std::env::args_os(), &env) {
        Ok(c) => c,
        Err(ConfigError::Help(text)) => {
            #[allow(clippy::print_stdout)] // --help and --version go to stdout
            {
                print!("{text}");
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    // OTEL_* variables are read from the process environment, as the OpenTelemetry SDK does.
    let traces = match Traces::from_env(&ProcessEnv) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format, traces.as_ref());
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let code = match portcullis_server::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    };
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    code
}

/// Logs go to stderr as JSON lines or text (`--log-format`), levels by `RUST_LOG` (default
/// info). Audit events (target `audit`) are always one JSON object per line, whatever
/// `RUST_LOG` and the format say, so they can be shipped and parsed as records. With `traces`,
/// spans also go to the OpenTelemetry exporter.
fn init_logging(format: LogFormat, traces: Option<&Traces>) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::prelude::*;

    // One static filter per layer: both cache their verdict per callsite, so spans and events
    // nobody logs cost nothing. (Nesting a dynamic `filter_fn` inside a layer's filter made
    // the registry keep a span for every h2 and tonic span on the request path, measured as
    // about a third of a cheap call's CPU.)
    let mut env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Audit events have their own layer; added last, this wins over any RUST_LOG directive.
    if let Ok(audit_off) = format!("{AUDIT_TARGET}=off").parse() {
        env_filter = env_filter.add_directive(audit_off);
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let operational: Boxed = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let operational = operational.with_filter(env_filter);
    let audit = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_filter(
            Targets::new()
                .with_target(AUDIT_TARGET, LevelFilter::INFO)
                .with_default(LevelFilter::OFF),
        );
    let traces = traces.map(Traces::layer);
    tracing_subscriber::registry()
        .with(operational)
        .with(audit)
        .with(traces)
        .init();
}

/// The tracing target of audit events.
const AUDIT_TARGET: &str = "audit";

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

// A build without `.cargo/config.toml`'s flag serves at about 60% of the rate (see `runtime`):
// its test build fails rather than letting it ship unnoticed.
#[cfg(all(test, not(tokio_unstable)))]
compile_error!("built without --cfg tokio_unstable (is RUSTFLAGS overriding .cargo/config.toml?)");
