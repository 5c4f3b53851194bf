//! `connector service install|uninstall|start|stop|status`: registers the connector with the
//! operating system's service manager — a systemd unit on Linux ([`systemd`]), a Service Control
//! Manager service on Windows ([`windows`], the crate's only Windows-only code).
//!
//! What the Windows service needs that is plain data lives here, so it is tested on every
//! platform: where its files go under `%ProgramData%` ([`WindowsLayout`]), the command line the
//! Service Control Manager starts ([`windows_arguments`]), and how it restarts a failed service
//! ([`RESTART_DELAYS`], [`FAILURE_RESET`]).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod systemd;
#[cfg(windows)]
pub mod windows;

pub use systemd::{Unit, SYSTEM_UNIT_DIR};

/// The service (and systemd unit) name unless `--name` says otherwise.
pub const DEFAULT_NAME: &str = "relay-connector";

/// The folder under `%ProgramData%` that holds the Windows service's files.
pub const WINDOWS_DIR: &str = "relay-connector";

/// How long the Service Control Manager waits before restarting a failed service: after the
/// first failure, the second, and every one after.
pub const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// A day without failures resets the restart count.
pub const FAILURE_RESET: Duration = Duration::from_secs(24 * 60 * 60);

/// How long Stop may take: the drain of in-flight streams plus the session's goodbye.
pub const STOP_WAIT_HINT: Duration = Duration::from_secs(60);

/// A service-management failure.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service name is not usable.
    #[error("invalid service name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    /// A file could not be written, read or removed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The service's configuration is invalid (exit code 64).
    #[error("configuration error: {0}")]
    Config(String),
    /// `systemctl` failed.
    #[error("systemctl {0} failed: {1}")]
    Systemctl(String, String),
    /// This platform has no such service manager.
    #[error("{0}: not supported on this platform")]
    Unsupported(&'static str),
    /// A Service Control Manager or Event Log call failed: what was tried, and why.
    #[error("{0}: {1}")]
    Windows(String, String),
}

/// Validates a service or unit name.
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidName(name.to_string()))
    }
}

/// Where the Windows service keeps its files: `%ProgramData%\relay-connector\` with
/// `connector.toml`, `secret` (the tenant credential, readable by SYSTEM and Administrators only)
/// and `logs\` (a file per day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsLayout {
    /// The folder itself.
    pub dir: PathBuf,
}

impl WindowsLayout {
    /// The layout for a value of `%ProgramData%`; `C:\ProgramData` when unset or empty.
    pub fn new(program_data: Option<&OsStr>) -> WindowsLayout {
        let base = match program_data {
            Some(p) if !p.is_empty() => p.to_string_lossy().into_owned(),
            _ => r"C:\ProgramData".to_string(),
        };
        WindowsLayout {
            dir: windows_join(Path::new(&base), WINDOWS_DIR),
        }
    }

    /// The layout for this process's `%ProgramData%`.
    pub fn from_env() -> WindowsLayout {
        WindowsLayout::new(std::env::var_os("ProgramData").as_deref())
    }

    /// The default config file.
    pub fn config(&self) -> PathBuf {
        windows_join(&self.dir, "connector.toml")
    }

    /// The default secret file (`secret_file = "secret"` in the config resolves here).
    pub fn secret(&self) -> PathBuf {
        windows_join(&self.dir, "secret")
    }

    /// The rolling log files' folder.
    pub fn logs(&self) -> PathBuf {
        windows_join(&self.dir, "logs")
    }
}

/// The arguments the Service Control Manager starts `connector.exe` with (after the executable).
pub fn windows_arguments(name: &str, config: &Path) -> Vec<OsString> {
    vec![
        "service".into(),
        "run".into(),
        "--name".into(),
        name.into(),
        "--config".into(),
        config.as_os_str().to_owned(),
    ]
}

/// The service's display name in the Services console.
pub fn windows_display_name(name: &str) -> String {
    if name == DEFAULT_NAME {
        "Relay tunnel connector".to_string()
    } else {
        format!("Relay tunnel connector ({name})")
    }
}

/// Joins with a backslash whatever platform builds the path (the paths are Windows paths, and
/// their tests run on Linux too).
fn windows_join(base: &Path, name: &str) -> PathBuf {
    let base = base.to_string_lossy();
    PathBuf::from(format!("{}\\{name}", base.trim_end_matches(['\\', '/'])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_odd_names() {
        for bad in ["", "a/b", "../x", "a b", "x;rm", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name(DEFAULT_NAME).unwrap();
    }

    #[test]
    fn windows_files_live_under_program_data() {
        let layout = WindowsLayout::new(Some(OsStr::new(r"D:\Data\")));
        assert_eq!(layout.dir, PathBuf::from(r"D:\Data\relay-connector"));
        assert_eq!(
            layout.config(),
            PathBuf::from(r"D:\Data\relay-connector\connector.toml")
        );
        assert_eq!(
            layout.secret(),
            PathBuf::from(r"D:\Data\relay-connector\secret")
        );
        assert_eq!(
            layout.logs(),
            PathBuf::from(r"D:\Data\relay-connector\logs")
        );
        for unset in [None, Some(OsStr::new(""))] {
            assert_eq!(
                WindowsLayout::new(unset).config(),
                PathBuf::from(r"C:\ProgramData\relay-connector\connector.toml")
            );
        }
    }

    #[test]
    fn the_service_runs_the_hidden_run_subcommand_with_its_config() {
        let config = PathBuf::from(r"C:\ProgramData\relay-connector\my config.toml");
        let args = windows_arguments("edge-1", &config);
        assert_eq!(
            args,
            [
                "service",
                "run",
                "--name",
                "edge-1",
                "--config",
                r"C:\ProgramData\relay-connector\my config.toml"
            ]
            .map(OsString::from)
        );
        assert_eq!(windows_display_name(DEFAULT_NAME), "Relay tunnel connector");
        assert_eq!(
            windows_display_name("edge-1"),
            "Relay tunnel connector (edge-1)"
        );
    }

    #[test]
    fn failed_services_restart_with_growing_delays() {
        assert!(RESTART_DELAYS.windows(2).all(|w| w[0] < w[1]));
        assert!(RESTART_DELAYS[0] >= Duration::from_secs(1));
        assert!(FAILURE_RESET > RESTART_DELAYS[2]);
    }
}
