use std::path::PathBuf;
use std::process::ExitCode;

use api::startup::Application;
use clap::Parser;
use shared::Settings;

/// HTTP facade of the asynchronous request-reply service.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file layered over the built-in defaults (environment variables still win).
    #[arg(long, env = "APP_CONFIG_FILE")]
    config: Option<PathBuf>,
}

#[actix_web::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load_or_exit_code(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let telemetry = shared::telemetry::init_for("api", &settings.log, &settings.telemetry);
    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(port = app.port(), "facade listening");
    let served = app.run_until_stopped().await;
    // Send the spans still buffered before exiting.
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
