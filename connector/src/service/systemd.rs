//! The systemd unit on Linux: runs `connector run --config FILE` and restarts it forever (but not
//! after a configuration error, exit code 64).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{check_name, ServiceError};

/// Where units go by default.
pub const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// What to install.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Unit name without `.service`.
    pub name: String,
    /// The connector binary to run.
    pub exe: PathBuf,
    /// The config file it runs with (absolute).
    pub config: PathBuf,
}

impl Unit {
    /// The systemd unit text.
    pub fn render(&self) -> String {
        format!(
            "[Unit]\n\
             Description=Relay tunnel connector ({name})\n\
             Documentation=https://github.com/ (see docs/operations.md)\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             Type=simple\n\
             ExecStart={exe} run --config {config}\n\
             Restart=always\n\
             RestartPreventExitStatus=64\n\
             RestartSec=2\n\
             KillSignal=SIGTERM\n\
             TimeoutStopSec=45\n\
             NoNewPrivileges=yes\n\
             ProtectSystem=strict\n\
             ProtectHome=read-only\n\
             PrivateTmp=yes\n\
             PrivateDevices=yes\n\
             ProtectKernelTunables=yes\n\
             ProtectKernelModules=yes\n\
             ProtectControlGroups=yes\n\
             RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
             RestrictNamespaces=yes\n\
             LockPersonality=yes\n\
             MemoryDenyWriteExecute=yes\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            name = self.name,
            exe = quote(&self.exe),
            config = quote(&self.config),
        )
    }

    /// The unit file path in `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.service", self.name))
    }
}

/// Writes the unit into `dir`; with `manage`, reloads systemd and enables + starts it.
pub fn install(unit: &Unit, dir: &Path, manage: bool) -> Result<PathBuf, ServiceError> {
    supported()?;
    check_name(&unit.name)?;
    let path = unit.path_in(dir);
    std::fs::write(&path, unit.render()).map_err(|e| ServiceError::Io(path.clone(), e))?;
    if manage {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", &format!("{}.service", unit.name)])?;
    }
    Ok(path)
}

/// Stops and disables the unit (with `manage`) and removes its file from `dir`.
pub fn uninstall(name: &str, dir: &Path, manage: bool) -> Result<PathBuf, ServiceError> {
    supported()?;
    check_name(name)?;
    if manage {
        // Stopping a unit that is not running is fine; a missing unit is reported by the removal.
        let _ = systemctl(&["disable", "--now", &format!("{name}.service")]);
    }
    let path = dir.join(format!("{name}.service"));
    std::fs::remove_file(&path).map_err(|e| ServiceError::Io(path.clone(), e))?;
    if manage {
        systemctl(&["daemon-reload"])?;
    }
    Ok(path)
}

/// `systemctl start|stop|status NAME.service`; returns its output.
pub fn control(action: &str, name: &str) -> Result<String, ServiceError> {
    supported()?;
    check_name(name)?;
    systemctl(&[action, &format!("{name}.service")])
}

fn supported() -> Result<(), ServiceError> {
    if cfg!(target_os = "linux") {
        Ok(())
    } else {
        Err(ServiceError::Unsupported("systemd units"))
    }
}

fn systemctl(args: &[&str]) -> Result<String, ServiceError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| ServiceError::Systemctl(args.join(" "), e.to_string()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `status` exits 3 for a stopped unit: still a useful answer.
    if out.status.success() || (args.first() == Some(&"status") && out.status.code() == Some(3)) {
        Ok(text)
    } else {
        Err(ServiceError::Systemctl(
            args.join(" "),
            text.trim().to_string(),
        ))
    }
}

/// Quotes a path for `ExecStart` when it contains spaces.
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains(' ') {
        format!("\"{}\"", s.replace('"', "\\\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> Unit {
        Unit {
            name: "relay-connector".into(),
            exe: "/usr/bin/connector".into(),
            config: "/etc/my connector/c.toml".into(),
        }
    }

    #[test]
    fn renders_a_restarting_hardened_unit() {
        let text = unit().render();
        assert!(
            text.contains(
                "ExecStart=/usr/bin/connector run --config \"/etc/my connector/c.toml\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("Restart=always"));
        assert!(text.contains("After=network-online.target"));
        assert!(text.contains("NoNewPrivileges=yes"));
        assert!(text.contains("WantedBy=multi-user.target"));
    }

    #[test]
    fn installs_and_uninstalls_into_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = install(&unit(), dir.path(), false).unwrap();
        assert_eq!(path, dir.path().join("relay-connector.service"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), unit().render());
        uninstall("relay-connector", dir.path(), false).unwrap();
        assert!(!path.exists());
        assert!(uninstall("relay-connector", dir.path(), false).is_err());
    }
}
