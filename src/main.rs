//! The `syncasync` command: `serve` (the default), and the tools that ship with it.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use syncasync::app::Application;
use syncasync::config::{Config, LogFormat, one_line_error};
use syncasync::loadgen::LoadgenArgs;
use syncasync::log_writer::{self, FlushGuard};
use syncasync::receiver::ReceiverArgs;
use syncasync::shutdown::{CancellationToken, terminate_signal};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "syncasync",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings of `serve`, which runs when no command is given.
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default): every setting is a flag or an `APP_*` variable.
    // Boxed: the settings outweigh every other command's arguments.
    Serve(Box<Config>),
    /// Generate load against a running service and report latencies, throughput and
    /// time-to-callback per mode.
    Loadgen(LoadgenArgs),
    /// Run a callback receiver: POST /callback, GET /callbacks, GET /callbacks/{request_id},
    /// DELETE /callbacks, GET /stats.
    Receiver(ReceiverArgs),
    /// Measure the work function's single-thread throughput (for benchmarks).
    #[command(hide = true)]
    BenchWork {
        #[arg(long, default_value_t = 1000)]
        iterations: u32,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let mut command = Cli::command();
    // Built up front, subcommands included: `one_line_error` prints the arguments of any
    // subcommand, and clap panics when printing an argument that was never built.
    command.build();
    let parsed = command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => match one_line_error(&command, &err) {
            Some(line) => {
                eprintln!("error: {line}");
                return ExitCode::from(2);
            }
            None => err.exit(),
        },
    };
    match cli.command {
        Some(Command::BenchWork {
            iterations,
            seconds,
        }) => {
            let rate =
                syncasync::work::measure_throughput(iterations, Duration::from_secs_f64(seconds));
            println!("{{\"iterations\":{iterations},\"units_per_second\":{rate:.1}}}");
            ExitCode::SUCCESS
        }
        Some(Command::Serve(config)) => serve(*config),
        Some(Command::Loadgen(args)) => loadgen(args),
        Some(Command::Receiver(args)) => receiver(args),
        None => serve(cli.serve),
    }
}

fn loadgen(args: LoadgenArgs) -> ExitCode {
    // Its report is the output: only warnings and errors are logged beside it (a Ctrl-C is
    // told by the report's INTERRUPTED, not by a log line on top of it).
    let logs = match init_logging(LogFormat::Text, "warn") {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    run_async(logs, |shutdown| async move {
        syncasync::loadgen::run_and_report(args, shutdown)
            .await
            .map_err(|err| err.to_string())
    })
}

fn receiver(args: ReceiverArgs) -> ExitCode {
    let logs = match init_logging(LogFormat::Text, "info") {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    run_async(logs, |shutdown| async move {
        syncasync::receiver::run(args, shutdown)
            .await
            .map_err(|err| err.to_string())
    })
}

fn serve(config: Config) -> ExitCode {
    let logs = match init_logging(config.log_format, "info") {
        Ok(guard) => guard,
        Err(code) => return code,
    };
    syncasync::timestamps::choose(config.timestamp_format);
    run_async(logs, |shutdown| async move {
        let app = Application::build(config)
            .await
            .map_err(|err| err.to_string())?;
        app.run(shutdown).await.map_err(|err| err.to_string())
    })
}

/// Runs `main` on a multi-threaded runtime with a shutdown token cancelled by SIGTERM or
/// SIGINT; an error becomes one line on stderr, after the log lines before it, and a failing
/// exit code.
fn run_async<F, Fut>(logs: FlushGuard, main: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                terminate_signal().await;
                shutdown.cancel();
            }
        });
        main(shutdown).await
    });
    drop(runtime);
    drop(logs);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr through a background writer, so a slow terminal or pipe never stalls
/// a request; the returned guard writes what is waiting when `main` ends.
/// Logs to stderr at `default_level` and above, unless RUST_LOG says otherwise.
fn init_logging(format: LogFormat, default_level: &str) -> Result<FlushGuard, ExitCode> {
    let (writer, guard) = log_writer::spawn(std::io::stderr(), format).map_err(|err| {
        eprintln!("error: no thread for the log writer: {err}");
        ExitCode::FAILURE
    })?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(guard)
}
