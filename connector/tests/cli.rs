//! The connector binary's command line: help, version, exit code 64 on bad config, service units.

use std::process::Command;

fn connector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_connector"))
}

#[test]
fn help_and_version() {
    let out = connector().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = connector().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--secret-file"));
}

#[test]
fn bad_configuration_exits_64_with_a_message_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "rsk_topsecretvalue").unwrap();
    // Missing server.
    let out = connector()
        .args([
            "run",
            "--tenant",
            "acme",
            "--target",
            "app=http://127.0.0.1:1",
        ])
        .arg("--secret-file")
        .arg(&secret)
        .env_remove("CONNECTOR_SERVER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server"), "{err}");
    // An unknown key from the environment.
    let out = connector()
        .args([
            "run",
            "--server",
            "https://relay.example",
            "--tenant",
            "acme",
            "--target",
            "app=http://127.0.0.1:1",
        ])
        .arg("--secret-file")
        .arg(&secret)
        .env("CONNECTOR_TIMOUT", "5s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timout"), "{err}");
    assert!(!err.contains("topsecretvalue"));
}

#[test]
fn service_install_writes_a_unit_for_a_valid_config_only() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "rsk_x").unwrap();
    let config = dir.path().join("connector.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"https://relay.example\"\ntenant = \"acme\"\nsecret_file = \"{}\"\n[targets.app]\nurl = \"http://127.0.0.1:8080\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let out = connector()
        .args(["service", "install", "--no-start", "--name", "conn-test"])
        .arg("--config")
        .arg(&config)
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(units.join("conn-test.service")).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_connector")).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={} run --config {}",
            exe.display(),
            config.canonicalize().unwrap().display()
        )),
        "{unit}"
    );

    std::fs::write(&config, "server = \"https://relay.example\"\nbogus = 1\n").unwrap();
    let out = connector()
        .args(["service", "install", "--no-start", "--name", "conn-bad"])
        .arg("--config")
        .arg(&config)
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(!units.join("conn-bad.service").exists());

    let out = connector()
        .args(["service", "uninstall", "--no-stop", "--name", "conn-test"])
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!units.join("conn-test.service").exists());
}
