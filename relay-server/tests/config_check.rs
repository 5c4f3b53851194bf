//! `relay-server config check`: the effective configuration with secrets masked and exit 0, or
//! the configuration error and exit 64.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay-server"));
    // The test's own RELAY_* variables (if any) must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("RELAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["config", "check"])
        .args(args)
        .envs(env.iter().copied());
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A certificate and key in `dir`, as PEM files.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["relay.example.com".to_string()]).unwrap();
    let (cert, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn prints_the_effective_configuration_with_the_password_masked() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "data_dir = \"data\"\n\
         database_url = \"postgres://relay:Sup3r-s3cret@db.internal:5432/relay?sslmode=require\"\n\
         [listen]\nhttps = \"0.0.0.0:443\"\n\
         [limits]\nrequest_timeout = \"45s\"\n",
    )
    .unwrap();
    let out = check(
        &[
            "--config",
            file.to_str().unwrap(),
            "--admin",
            "127.0.0.1:9191",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("RELAY_SHUTDOWN__GRACE", "12s")],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("Sup3r-s3cret"), "{stdout}");
    assert!(!stderr.contains("Sup3r-s3cret"), "{stderr}");
    // Every layer shows: the file, the environment, the flags, and the defaults below them.
    for line in [
        "database_url = \"postgres://relay:***@db.internal:5432/relay?sslmode=require\"",
        "https = \"0.0.0.0:443\"",
        "request_timeout = \"45s\"",
        "grace = \"12s\"",
        "admin = \"127.0.0.1:9191\"",
        "max_headers = 100",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
    for line in [
        format!("cert = \"{}\"", cert.display()),
        format!("key = \"{}\"", key.display()),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
    // The key's content is never printed.
    let pem = std::fs::read_to_string(&key).unwrap();
    let body = pem.lines().nth(1).unwrap();
    assert!(!stdout.contains(body), "{stdout}");
    // A relative data_dir is anchored at the config file's directory.
    let data = dir.path().join("data");
    assert!(
        stdout.contains(&format!("data_dir = \"{}\"", data.display())),
        "{stdout}"
    );
    // The output is TOML.
    stdout.parse::<toml::Table>().unwrap();
    // Checking creates nothing.
    assert!(!data.exists());
}

#[test]
fn the_example_and_packaged_configs_pass() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/relay-server.example.toml"
    );
    let out = check(&["--config", example], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("[queue]"), "{stdout}");
    // The .deb's /etc/relay-server/relay.toml starts as shipped (docs/install.md).
    let packaged = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/relay-server/relay.toml"
    );
    let out = check(&["--config", packaged], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for line in [
        "data_dir = \"/var/lib/relay-server\"",
        "admin = \"127.0.0.1:9090\"",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
}

#[test]
fn a_configuration_error_exits_64_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "database_url = \"postgres://relay:Sup3r-s3cret@db/relay\"\n[limits]\nmax_boddy_bytes = 1\n",
    )
    .unwrap();
    let out = check(&["--config", file.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("configuration error") && stderr.contains("max_boddy_bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("Sup3r-s3cret"), "{stderr}");

    // Half a certificate pair, from the flags.
    let out = check(&["--tls-cert", "/etc/relay-server/fullchain.pem"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");

    // Certificate files that are missing or not PEM (the error names the file, never the key).
    let (cert, key) = certificate(dir.path());
    let missing_cert = dir.path().join("missing.pem");
    let out = check(
        &[
            "--tls-cert",
            missing_cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    let out = check(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            cert.to_str().unwrap(),
        ],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no usable private key"), "{stderr}");

    // A missing config file.
    let missing = dir.path().join("nope.toml");
    let out = check(&["--config", missing.to_str().unwrap()], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("cannot read config file"), "{stderr}");

    // A bad value from the environment.
    let out = check(&[], &[("RELAY_LISTEN__ADMIN", "0.0.0.0:9090")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
}
