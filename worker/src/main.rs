use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shared::Settings;
use worker::startup;
use worker::Registry;

/// Worker of the asynchronous request-reply service.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file layered over the built-in defaults (environment variables still win).
    #[arg(long, env = "APP_CONFIG_FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init(&settings.log);
    // Register your own job types here (see README, "Adding a job type").
    let registry = Registry::builtin();
    let shutdown = startup::shutdown_signal();
    match startup::run(settings, registry, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}
