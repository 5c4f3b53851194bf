//! `management-web`: serves the management app alone against a relay's database.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

/// The relay's management web, standalone (it also runs inside relay-server's admin listener).
#[derive(Parser, Debug)]
#[command(name = "management-web", version, about)]
struct Cli {
    /// Database URL, e.g. sqlite://./relay-data/relay.db (or MANAGEMENT_DATABASE_URL).
    #[arg(long, env = "MANAGEMENT_DATABASE_URL", value_name = "URL")]
    database_url: String,
    /// Address to listen on (or MANAGEMENT_LISTEN).
    #[arg(long, env = "MANAGEMENT_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let store = match relay_store::Store::connect(&cli.database_url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("management-web: {e}");
            return ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("management-web: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %cli.listen, "management web listening");
    let app = management_web::app(management_web::AppState { store });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("management-web: {e}");
            ExitCode::FAILURE
        }
    }
}
