//! `relay-server`: CLI → config → tracing → dispatch → exit code (64 for config errors).

use std::process::ExitCode;

use clap::Parser;
use process_setup::layered::{ProcessEnv, EXIT_CONFIG};
use relay_server::cli::{Cli, Command, ConfigCommand, ListenArgs};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    process_setup::allocator::keep_transfer_memory();
    let cli = Cli::parse();
    process_setup::init_tracing(&cli.log_format, "info,quinn=warn,rustls=warn,sqlx=warn");
    let config = match cli.load_config(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay-server: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    // `config check` ends here: 0 with the effective settings, or 64 like any configuration error.
    if let Some(Command::Config(ConfigCommand::Check(_))) = &cli.command {
        return match relay_server::cli::check_config(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay-server: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        };
    }
    let command = cli.command.unwrap_or(Command::Run(ListenArgs::default()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(process_setup::cancel_on_signal(shutdown.clone()));
        relay_server::cli::dispatch(command, config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
