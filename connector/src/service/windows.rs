//! The Windows service: registration with the Service Control Manager (auto-start, restarted on
//! failure), the `service run` entry point the SCM starts, lifecycle events and errors in the
//! Windows Event Log (source = the service name, log "Application"), and a rolling daily log file
//! under `%ProgramData%\relay-connector\logs`. Stop and system shutdown cancel the token
//! [`crate::Connector::run`] takes, so the service drains like SIGTERM does on Linux.
//!
//! Everything here calls Windows; the plain parts (paths, arguments, restart policy) are in
//! [`super`] and tested on every platform.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::{
    check_name, windows_arguments, windows_display_name, ServiceError, WindowsLayout,
    FAILURE_RESET, RESTART_DELAYS, STOP_WAIT_HINT,
};
use crate::{Config, Connector};

/// What `connector service install` registers.
#[derive(Debug, Clone)]
pub struct Install {
    /// Service name (also the Event Log source).
    pub name: String,
    /// `connector.exe`, absolute.
    pub exe: PathBuf,
    /// The config file the service runs with, absolute.
    pub config: PathBuf,
    /// Start it now.
    pub start: bool,
}

/// Creates the service (auto-start, LocalSystem, restarted on failure), the Event Log source and
/// `%ProgramData%\relay-connector\logs`, then starts it unless told not to.
pub fn install(spec: &Install) -> Result<String, ServiceError> {
    check_name(&spec.name)?;
    let layout = WindowsLayout::from_env();
    std::fs::create_dir_all(layout.logs()).map_err(|e| ServiceError::Io(layout.logs(), e))?;
    restrict_folder(&layout.dir);
    // The Event Log source points at connector.exe, which embeds the message table.
    if let Err(e) = eventlog::register(&spec.name) {
        return Err(windows_error("registering the Event Log source", e));
    }
    let manager = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let info = ServiceInfo {
        name: OsString::from(&spec.name),
        display_name: OsString::from(windows_display_name(&spec.name)),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: spec.exe.clone(),
        launch_arguments: windows_arguments(&spec.name, &spec.config),
        dependencies: vec![],
        account_name: None, // LocalSystem: reads %ProgramData%\relay-connector
        account_password: None,
    };
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS;
    let service = manager
        .create_service(&info, access)
        .map_err(|e| windows_error("creating the service", e))?;
    service
        .set_description(
            "Dials out to the relay and forwards its requests to local backends (relay tunnel).",
        )
        .map_err(|e| windows_error("setting the description", e))?;
    let actions = RESTART_DELAYS
        .iter()
        .map(|&delay| ServiceAction {
            action_type: ServiceActionType::Restart,
            delay,
        })
        .collect();
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(FAILURE_RESET),
            reboot_msg: None,
            command: None,
            actions: Some(actions),
        })
        .map_err(|e| windows_error("setting the failure actions", e))?;
    // Also restart after a stop with an error exit code, not only after a crash. Wine's SCM
    // lacks this setting (ERROR_INVALID_LEVEL): the service is still restarted after crashes.
    let mut notes = String::new();
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        let e = windows_error("restarts after error exits", e);
        notes = format!("\nwarning: {e}; the service is restarted after crashes only");
    }
    if spec.start {
        service
            .start::<&str>(&[])
            .map_err(|e| windows_error("starting the service", e))?;
    }
    Ok(format!(
        "installed service {} ({}), config {}, logs in {}{}",
        spec.name,
        spec.exe.display(),
        spec.config.display(),
        layout.logs().display(),
        if spec.start { ", started" } else { "" },
    ) + &notes)
}

/// Stops (waiting for the drain) and deletes the service, and removes its Event Log source.
pub fn uninstall(name: &str) -> Result<String, ServiceError> {
    check_name(name)?;
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
    let service = manager
        .open_service(name, access)
        .map_err(|e| windows_error("opening the service", e))?;
    let status = service
        .query_status()
        .map_err(|e| windows_error("querying the service", e))?;
    if status.current_state != ServiceState::Stopped {
        service
            .stop()
            .map_err(|e| windows_error("stopping the service", e))?;
        wait_for(&service, ServiceState::Stopped, STOP_WAIT_HINT)?;
    }
    service
        .delete()
        .map_err(|e| windows_error("deleting the service", e))?;
    if let Err(e) = eventlog::deregister(name) {
        warn!(error = %e, "could not remove the Event Log source");
    }
    Ok(format!(
        "removed service {name} (files in {} are kept)",
        WindowsLayout::from_env().dir.display()
    ))
}

/// Starts the service.
pub fn start(name: &str) -> Result<String, ServiceError> {
    let service = open(name, ServiceAccess::START)?;
    service
        .start::<&str>(&[])
        .map_err(|e| windows_error("starting the service", e))?;
    Ok(format!("started {name}"))
}

/// Stops the service and waits for its drain to finish.
pub fn stop(name: &str) -> Result<String, ServiceError> {
    let service = open(name, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?;
    service
        .stop()
        .map_err(|e| windows_error("stopping the service", e))?;
    wait_for(&service, ServiceState::Stopped, STOP_WAIT_HINT)?;
    Ok(format!("stopped {name}"))
}

/// The service's state, process id and command line.
pub fn status(name: &str) -> Result<String, ServiceError> {
    let service = open(
        name,
        ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
    )?;
    let status = service
        .query_status()
        .map_err(|e| windows_error("querying the service", e))?;
    let config = service
        .query_config()
        .map_err(|e| windows_error("reading the service's configuration", e))?;
    let pid = status
        .process_id
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    Ok(format!(
        "{name}: {:?}{pid}\nstart: {:?}\ncommand: {}\nlogs: {}",
        status.current_state,
        config.start_type,
        config.executable_path.display(),
        WindowsLayout::from_env().logs().display()
    ))
}

/// `connector service run`: hands this process to the Service Control Manager, which calls back
/// on another thread; returns when the service has stopped.
pub fn run(name: &str, config: &Path) -> Result<(), ServiceError> {
    check_name(name)?;
    let _ = STARTED_AS.set((name.to_string(), config.to_path_buf()));
    service_dispatcher::start(name, ffi_service_main).map_err(|e| {
        // 1063: ERROR_FAILED_SERVICE_CONTROLLER_CONNECT, started from a console.
        let from_console =
            matches!(&e, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(1063));
        if from_console {
            ServiceError::Windows(
                "service run".into(),
                "only the Service Control Manager starts this; in a console use `connector run`"
                    .into(),
            )
        } else {
            windows_error("starting the service dispatcher", e)
        }
    })
}

/// Name and config file of the service this process runs, for `service_main`.
static STARTED_AS: OnceLock<(String, PathBuf)> = OnceLock::new();

windows_service::define_windows_service!(ffi_service_main, service_main);

/// The service's main function, on the dispatcher's thread.
fn service_main(_arguments: Vec<OsString>) {
    let Some((name, config)) = STARTED_AS.get().cloned() else {
        return;
    };
    let layout = WindowsLayout::from_env();
    // Keeps the log file writer flushing until the service stops.
    let _log_guard = init_logging(&name, &layout.logs());
    let shutdown = CancellationToken::new();
    let on_control = shutdown.clone();
    let handler = service_control_handler::register(&name, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            on_control.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    });
    let handle = match handler {
        Ok(h) => h,
        Err(e) => return error!(error = %e, "cannot register the service control handler"),
    };
    let code = match serve(handle, shutdown, &name, &config) {
        Ok(()) => ServiceExitCode::NO_ERROR,
        Err(ServiceError::Config(e)) => {
            error!(config = %config.display(), error = %e, "configuration error: the service stops");
            ServiceExitCode::ServiceSpecific(process_setup::layered::EXIT_CONFIG as u32)
        }
        Err(e) => {
            error!(error = %e, "the service failed");
            ServiceExitCode::ServiceSpecific(1)
        }
    };
    info!(service = %name, "service stopped");
    let _ = handle.set_service_status(service_status(ServiceState::Stopped, code, Duration::ZERO));
}

/// Loads the config and runs the connector until Stop, reporting each state to the SCM.
fn serve(
    handle: service_control_handler::ServiceStatusHandle,
    shutdown: CancellationToken,
    name: &str,
    config_path: &Path,
) -> Result<(), ServiceError> {
    let report = |state, wait| {
        if let Err(e) =
            handle.set_service_status(service_status(state, ServiceExitCode::NO_ERROR, wait))
        {
            warn!(error = %e, ?state, "cannot report the service state");
        }
    };
    report(ServiceState::StartPending, Duration::from_secs(10));
    let config = Config::load(
        Some(config_path),
        &process_setup::layered::ProcessEnv,
        toml::Table::new(),
    )
    .map_err(|e| ServiceError::Config(e.to_string()))?;
    let connector = Connector::new(config).map_err(|e| ServiceError::Config(e.to_string()))?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| ServiceError::Windows("starting the runtime".into(), e.to_string()))?;
    report(ServiceState::Running, Duration::ZERO);
    info!(service = %name, config = %config_path.display(), "service started");
    runtime.block_on(async {
        let run = connector.run(shutdown.clone());
        tokio::pin!(run);
        // Why select: Stop must be acknowledged (StopPending) while the drain runs.
        tokio::select! {
            _ = &mut run => return,
            _ = shutdown.cancelled() => {}
        }
        info!(service = %name, "stop requested: draining");
        report(ServiceState::StopPending, STOP_WAIT_HINT);
        run.await;
    });
    Ok(())
}

fn service_status(
    state: ServiceState,
    exit_code: ServiceExitCode,
    wait_hint: Duration,
) -> ServiceStatus {
    let controls_accepted = match state {
        ServiceState::Running => ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        _ => ServiceControlAccept::empty(),
    };
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint: 0,
        wait_hint,
        process_id: None,
    }
}

/// Log file (daily, 14 kept) for everything at `RUST_LOG` (default info); the Event Log for
/// warnings, errors and this module's lifecycle events. Returns the file writer's flush guard.
fn init_logging(name: &str, dir: &Path) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    let event_log = eventlog::EventLog::new(name, log::Level::Info)
        .ok()
        .map(|log| EventLogLayer { log });
    let file = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("connector")
        .filename_suffix("log")
        .max_log_files(14)
        .build(dir);
    let (file_layer, guard) = match file {
        Ok(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer);
            (Some(layer), Some(guard))
        }
        Err(_) => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(file_layer.with_filter(filter))
        .with(event_log)
        .try_init();
    guard
}

/// Forwards warnings, errors and the service's lifecycle events to the Windows Event Log.
struct EventLogLayer {
    log: eventlog::EventLog,
}

impl<S: tracing::Subscriber> Layer<S> for EventLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => log::Level::Error,
            tracing::Level::WARN => log::Level::Warn,
            tracing::Level::INFO if meta.target() == module_path!() => log::Level::Info,
            _ => return,
        };
        let mut text = Text::default();
        event.record(&mut text);
        log::Log::log(
            &self.log,
            &log::Record::builder()
                .args(format_args!("{}", text.0))
                .level(level)
                .target(meta.target())
                .build(),
        );
    }
}

/// An event's message followed by its fields as `key=value`.
#[derive(Default)]
struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            self.0 = format!("{value:?}{rest}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, ServiceError> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| {
        windows_error(
            "connecting to the Service Control Manager (run as Administrator)",
            e,
        )
    })
}

fn open(
    name: &str,
    access: ServiceAccess,
) -> Result<windows_service::service::Service, ServiceError> {
    check_name(name)?;
    manager(ServiceManagerAccess::CONNECT)?
        .open_service(name, access)
        .map_err(|e| windows_error(&format!("opening service {name}"), e))
}

fn wait_for(
    service: &windows_service::service::Service,
    state: ServiceState,
    limit: Duration,
) -> Result<(), ServiceError> {
    let start = Instant::now();
    loop {
        let now = service
            .query_status()
            .map_err(|e| windows_error("querying the service", e))?;
        if now.current_state == state {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(ServiceError::Windows(
                format!("waiting for {state:?}"),
                format!("still {:?} after {limit:?}", now.current_state),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Restricts the folder (config, secret, logs) to SYSTEM and Administrators, with `icacls`.
fn restrict_folder(dir: &Path) {
    let out = std::process::Command::new("icacls")
        .arg(dir)
        .args([
            "/inheritance:r",
            "/grant:r",
            "*S-1-5-18:(OI)(CI)F",
            "/grant:r",
            "*S-1-5-32-544:(OI)(CI)F",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => warn!(
            dir = %dir.display(),
            output = %String::from_utf8_lossy(&o.stderr).trim(),
            "icacls could not restrict the folder to SYSTEM and Administrators"
        ),
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot run icacls"),
    }
}

/// The error with its cause: windows-service's own text hides the OS error behind it.
fn windows_error(what: &str, e: impl std::error::Error) -> ServiceError {
    let why = match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    ServiceError::Windows(what.to_string(), why)
}
