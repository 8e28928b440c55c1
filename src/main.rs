//! The `syncasync` command: `serve` (the default), and the tools that ship with it.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use syncasync::app::Application;
use syncasync::config::{Config, one_line_error};
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
    /// Run the service (the default).
    Serve(Config),
    /// Measure the work function's single-thread throughput (for benchmarks).
    #[command(hide = true)]
    BenchWork {
        #[arg(long, default_value_t = 1000)]
        iterations: u32,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    let mut command = Cli::command();
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
        Some(Command::Serve(config)) => serve(config),
        None => serve(cli.serve),
    }
}

fn serve(config: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
    runtime.block_on(async {
        let app = match Application::build(config).await {
            Ok(app) => app,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                terminate_signal().await;
                shutdown.cancel();
            }
        });
        match app.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        }
    })
}
