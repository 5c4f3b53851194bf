//! `connector`: CLI → config → tracing → run until Ctrl-C/SIGTERM → exit code.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, ConfigCommand, RunArgs, ServiceCommand};
use connector::service::{self, ServiceError};
use connector::{Config, Connector};
use process_setup::layered::EXIT_CONFIG;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    process_setup::allocator::keep_transfer_memory();
    let args = match Cli::parse().command {
        Command::Run(args) => args,
        Command::Config(ConfigCommand::Check(args)) => return config_check(&args),
        Command::Service(cmd) => return service(cmd),
    };
    process_setup::init_tracing(&args.log_format, "info,quinn=warn,rustls=warn");
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let connector = match Connector::new(config) {
            Ok(c) => c,
            Err(e) => return config_error(e),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(process_setup::cancel_on_signal(shutdown.clone()));
        connector.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

/// `config check`: the effective configuration, or the error and 64.
fn config_check(args: &RunArgs) -> ExitCode {
    // Nothing is opened or bound: a running connector's listeners are not disturbed.
    match args.load() {
        Ok(config) => {
            print!("{}", cli::render(&config));
            ExitCode::SUCCESS
        }
        Err(e) => config_error(e),
    }
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("connector: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG as u8)
}

fn service(cmd: ServiceCommand) -> ExitCode {
    let result = match cmd {
        ServiceCommand::Install {
            config,
            name,
            unit_dir,
            no_start,
        } => install(config, name, unit_dir, !no_start),
        ServiceCommand::Uninstall {
            name,
            unit_dir,
            no_stop,
        } => uninstall(&name, &unit_dir, !no_stop),
        ServiceCommand::Start { name } => control("start", &name),
        ServiceCommand::Stop { name } => control("stop", &name),
        ServiceCommand::Status { name } => control("status", &name),
        ServiceCommand::Run { config, name } => {
            run_as_service(&name, &config).map(|()| String::new())
        }
    };
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{}", text.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(ServiceError::Config(e)) => config_error(e),
        Err(e) => {
            eprintln!("connector: {e}");
            ExitCode::FAILURE
        }
    }
}

fn install(
    config: Option<PathBuf>,
    name: String,
    unit_dir: PathBuf,
    start: bool,
) -> Result<String, ServiceError> {
    let config = match config {
        Some(c) => c,
        None if cfg!(windows) => service::WindowsLayout::from_env().config(),
        None => return Err(ServiceError::Config("--config FILE is required".into())),
    };
    // The service must not point at a config that would fail at every restart.
    Config::load(
        Some(&config),
        &process_setup::layered::ProcessEnv,
        toml::Table::new(),
    )
    .map_err(|e| ServiceError::Config(format!("{}: {e}", config.display())))?;
    let io = |p: &str, e| ServiceError::Io(PathBuf::from(p), e);
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| io("connector executable", e))?;
    let config = std::path::absolute(&config).map_err(|e| io("config", e))?;
    #[cfg(windows)]
    {
        let _ = unit_dir;
        service::windows::install(&service::windows::Install {
            name,
            exe: strip_verbatim(exe),
            config,
            start,
        })
    }
    #[cfg(not(windows))]
    {
        let config = config.canonicalize().map_err(|e| io("config", e))?;
        service::systemd::install(&service::Unit { name, exe, config }, &unit_dir, start)
            .map(|p| format!("installed {}", p.display()))
    }
}

fn uninstall(name: &str, unit_dir: &std::path::Path, stop: bool) -> Result<String, ServiceError> {
    #[cfg(windows)]
    {
        let _ = (unit_dir, stop);
        service::windows::uninstall(name)
    }
    #[cfg(not(windows))]
    {
        service::systemd::uninstall(name, unit_dir, stop)
            .map(|p| format!("removed {}", p.display()))
    }
}

fn control(action: &str, name: &str) -> Result<String, ServiceError> {
    #[cfg(windows)]
    {
        match action {
            "start" => service::windows::start(name),
            "stop" => service::windows::stop(name),
            _ => service::windows::status(name),
        }
    }
    #[cfg(not(windows))]
    {
        service::systemd::control(action, name)
    }
}

fn run_as_service(name: &str, config: &std::path::Path) -> Result<(), ServiceError> {
    #[cfg(windows)]
    {
        service::windows::run(name, config)
    }
    #[cfg(not(windows))]
    {
        let _ = (name, config);
        Err(ServiceError::Unsupported(
            "`service run` (the Windows service entry point; use `connector run`)",
        ))
    }
}

/// `canonicalize` on Windows gives `\\?\C:\…`, which the Service Control Manager's command line
/// does not need.
#[cfg(windows)]
fn strip_verbatim(p: PathBuf) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix(r"\\?\")) {
        Some(rest) if !rest.starts_with("UNC") => PathBuf::from(rest),
        _ => p,
    }
}
